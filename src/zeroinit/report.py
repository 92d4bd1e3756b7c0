"""results.json files -> per-epoch means with 95% confidence intervals, figures and tables.

Runs are grouped by everything in their config but the seed (and settings that do not change
the experiment: paths, device, logging); a figure is one sweep (its `sweep_name`) on one
dataset. Only `completed` runs enter a mean; `diverged`, `failed` and `running` runs are
counted and listed, never averaged in silently (`interrupted` ones count as running: a rerun
resumes both).
"""

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from zeroinit.config import flatten
from zeroinit.init import bias_is_scaled
from zeroinit.keys import ignored_by_report
from zeroinit.paper import paper_accuracy
from zeroinit.report_diagnostics import plot_gradient_flow, summary_columns
from zeroinit.results import FILENAME

# Friendly names for the keys that usually tell the lines of a figure apart.
SHORT = {"model.name": "model", "init.name": "init", "init.bias_scale": "x"}


@dataclass
class Run:
    path: Path
    results: dict

    @property
    def status(self) -> str:
        return self.results.get("status", "unknown")

    @property
    def config(self) -> dict:
        return flatten(self.results.get("config") or {})

    def group_key(self) -> str:
        return json.dumps(
            {k: v for k, v in self.config.items() if not ignored_by_report(k)},
            sort_keys=True,
            default=str,
        )


@dataclass
class Group:
    key: str
    runs: list = field(default_factory=list)
    label: str = ""

    @property
    def config(self) -> dict:
        return self.runs[0].config

    def by_status(self, status: str) -> list:
        return [r for r in self.runs if r.status == status]

    def curve(self, metric: str = "test_acc"):
        """(epochs, mean, ci half-width, n) over completed runs; epochs common to all."""
        done = self.by_status("completed")
        if not done:
            return np.array([]), np.array([]), np.array([]), 0
        length = min(len(r.results["epochs"]) for r in done)
        values = np.array(
            [[e[metric] for e in r.results["epochs"][:length]] for r in done], dtype=float
        )
        mean, half = mean_ci(values)
        return np.arange(1, length + 1), mean, half, len(done)

    def mean_epoch_time(self) -> float:
        times = [
            e["epoch_time_s"]
            for r in self.runs
            for e in r.results.get("epochs", [])
            if e.get("epoch_time_s") is not None
        ]
        return float(np.mean(times)) if times else math.nan


def mean_ci(values: np.ndarray, level: float = 0.95):
    """Mean over axis 0 and the half-width of its Student-t confidence interval (n-1 degrees
    of freedom). With one run the interval is undefined: NaN."""
    n = values.shape[0]
    mean = values.mean(axis=0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sem = values.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, stats.t.ppf(0.5 + level / 2, n - 1) * sem


def find_runs(paths) -> list[Run]:
    runs, seen = [], set()
    for p in map(Path, paths):
        files = [p] if p.name == FILENAME else sorted(p.rglob(FILENAME)) if p.is_dir() else []
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            try:
                results = json.loads(f.read_text())
                problem = shape_problem(results)
                if problem:
                    raise ValueError(f"not a run's results.json: {problem}")
                runs.append(Run(f.parent, results))
            except (OSError, ValueError) as e:
                runs.append(Run(f.parent, {"status": "unreadable", "error": str(e)}))
    return runs


def shape_problem(results) -> str | None:
    """Why valid JSON is not a results.json the report can read (zeroinit.results), or None."""
    if not isinstance(results, dict):
        return f"a JSON {type(results).__name__}, not an object"
    for key, kind in (("status", str), ("config", dict), ("epochs", list)):
        if not isinstance(results.get(key), kind):
            return f"no {key!r} ({kind.__name__})"
    if not all(isinstance(e, dict) and "epoch" in e for e in results["epochs"]):
        return "an entry of 'epochs' without its epoch"
    return None


def figure_key(run: Run) -> str:
    cfg = run.config
    return f"{cfg.get('sweep_name', 'runs')}-{cfg.get('dataset.name', '?')}"


def group_runs(runs: list[Run]) -> dict[str, list[Group]]:
    """figure -> its groups (lines), each labelled by the config keys that differ between the
    figure's lines."""
    figures: dict[str, dict[str, Group]] = {}
    for run in runs:
        if run.status == "unreadable":
            continue
        groups = figures.setdefault(figure_key(run), {})
        groups.setdefault(run.group_key(), Group(run.group_key())).runs.append(run)
    out = {}
    for fig, groups in sorted(figures.items()):
        groups = list(groups.values())
        configs = [{k: v for k, v in g.config.items() if not ignored_by_report(k)} for g in groups]
        keys = sorted({k for c in configs for k in c})
        varying = [
            k
            for k in keys
            if len({json.dumps(c.get(k), default=str) for c in configs}) > 1
            and not k.endswith("._target_")
        ]
        # A figure's lines are told apart by model, init and scale first, then by any other
        # key that these do not already determine (init.weight follows from init.name).
        varying.sort(key=lambda k: (list(SHORT).index(k) if k in SHORT else len(SHORT), k))
        shown = []
        for k in varying:
            seen = {}
            for c in configs:
                ident = json.dumps([c.get(s) for s in shown], default=str)
                seen.setdefault(ident, set()).add(json.dumps(c.get(k), default=str))
            if any(len(v) > 1 for v in seen.values()):
                shown.append(k)
        for g in groups:
            c = g.config
            parts = [
                str(c.get(k))
                if k in ("model.name", "init.name")
                else f"{SHORT.get(k, k)}{'' if k in SHORT else '='}{c.get(k)}"
                for k in shown
                if k != "init.bias_scale" or bias_is_scaled(c.get("init.bias"))
            ]
            g.label = " ".join(parts) or f"{c.get('model.name')} {c.get('init.name')}"
        out[fig] = sorted(groups, key=lambda g: (g.config.get("model.name") == "logreg", g.label))
    return out


def table_rows(figures: dict[str, list[Group]]) -> list[dict]:
    rows = []
    for fig, groups in figures.items():
        for g in groups:
            epochs, mean, half, n = g.curve()
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
                "diverged": len(g.by_status("diverged")),
                "failed": len(g.by_status("failed")),
                "running": len(g.by_status("running")) + len(g.by_status("interrupted")),
                "mean_epoch_time_s": g.mean_epoch_time(),
                "paper_%": paper_accuracy(
                    c.get("dataset.name"),
                    c.get("model.name"),
                    c.get("init.name"),
                    c.get("init.bias_scale", 1.0),
                ),
            }
            row.update(_diagnostic_columns(g))
            rows.append(row)
    return rows


def _diagnostic_columns(group: Group) -> dict:
    """Mean of the diagnostics summary over the group's completed runs, where runs have it."""
    values = [
        summary_columns(r.results)
        for r in group.by_status("completed")
        if r.results.get("diagnostics")
    ]
    values = [v for v in values if v]
    if not values:
        return {}
    return {k: float(np.mean([v[k] for v in values if k in v])) for k in values[0]}


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
        runs = [
            r
            for r in g.by_status("completed")
            if (r.results.get("diagnostics") or {}).get("first_steps")
        ]
        if runs:
            chosen[g.label] = min(runs, key=lambda r: r.config.get("seed", 0)).results
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


def not_averaged(runs: list[Run]) -> list[str]:
    return [
        f"- {r.path}: {r.status}"
        + (f" ({r.results.get('error')})" if r.results.get("error") else "")
        for r in runs
        if r.status != "completed"
    ]

"""results.json files -> each run's outcome, per-epoch means with 95% intervals, figures and
tables.

Runs are grouped by everything in their config but the seed (and settings that do not change
the experiment: paths, device, logging); a figure is one sweep (its `sweep_name`) on one
dataset. Only `completed` runs enter a mean; `diverged`, `failed` and `running` runs are
counted and listed, never averaged in silently (`interrupted` ones count as running: a rerun
resumes both). How often a line's runs never learned, when they learned, and how lines
compare: zeroinit.outcomes (its rules and methods).
"""

import csv
import math
import shutil
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from zeroinit import outcomes
from zeroinit.keys import ignored_by_report
from zeroinit.paper import paper_accuracy
from zeroinit.report_diagnostics import plot_gradient_flow, summary_columns
from zeroinit.results import EPOCH_COLUMNS, RUN_COLUMNS, read_results


@dataclass
class Group:
    """One line of a figure: its runs' rows of the results frame (zeroinit.results.load)."""

    key: str
    rows: "pandas.DataFrame"  # noqa: F821 - pandas is imported where the frame is made
    label: str = ""
    margin: float = outcomes.MARGIN  # learned: test accuracy >= chance + margin
    _runs: object = field(default=None, init=False, repr=False)  # outcomes(), once

    def outcomes(self):
        """Each run's outcome (zeroinit.outcomes.per_run): learned, when, final accuracy."""
        if self._runs is None:
            self._runs = outcomes.per_run(self.rows, self.margin)
        return self._runs

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

    def per_epoch(self, metric: str = "test_acc", runs: list | None = None) -> np.ndarray:
        """(completed runs, epochs) of `metric`, over the epochs common to all; `runs`, if
        given, gets the run folders in the rows' order."""
        done = self.completed_epochs()
        grouped = list(done.groupby("run"))
        if runs is not None:
            runs[:] = [run for run, _ in grouped]
        per_run = [g.sort_values("epoch")[metric].to_numpy(float) for _, g in grouped]
        if not per_run:
            return np.zeros((0, 0))
        length = min(len(v) for v in per_run)
        return np.array([v[:length] for v in per_run])

    def curve(self, metric: str = "test_acc"):
        """(epochs, mean, Student-t ci half-width, n) over completed runs; epochs common to
        all. The table's `ci95_%`; the figures draw `band`, which stays inside [0, 1]."""
        values = self.per_epoch(metric)
        if not len(values):
            return np.array([]), np.array([]), np.array([]), 0
        mean, half = mean_ci(values)
        return np.arange(1, values.shape[1] + 1), mean, half, len(values)

    def band(self):
        """(epochs, mean, low, high, n, method) of test accuracy per epoch over completed runs,
        the interval of zeroinit.outcomes.mean_interval (inside [0, 1]; NaN for one run)."""
        values = self.per_epoch()
        if not len(values):
            return np.array([]), np.array([]), np.array([]), np.array([]), 0, ""
        bounds = [outcomes.mean_interval(values[:, e]) for e in range(values.shape[1])]
        low, high = (np.array([b[i] for b in bounds]) for i in (0, 1))
        methods = {b[2] for b in bounds}
        epochs = np.arange(1, values.shape[1] + 1)
        return epochs, values.mean(0), low, high, len(values), "/".join(sorted(methods))

    def not_learned_by_epoch(self) -> np.ndarray:
        """Per epoch (common to all completed runs), the fraction of completed runs that have
        not yet reached the learned threshold (chance + margin)."""
        order = []
        values = self.per_epoch(runs=order)
        if not len(values):
            return np.array([])
        threshold = self.outcomes().set_index("run").loc[order, "threshold"].to_numpy(float)
        reached = np.maximum.accumulate(values >= threshold[:, None] - 1e-12, axis=1)
        return 1 - reached.mean(0)

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


def group_runs(frame, margin: float = outcomes.MARGIN) -> dict[str, list[Group]]:
    """figure -> its lines, from zeroinit.results.load's frame (unreadable runs left out);
    a run has learned once its test accuracy reaches chance + `margin`."""
    readable = frame[frame["status"] != "unreadable"] if len(frame) else frame
    out = {}
    for fig in sorted(set(readable["figure"])) if len(readable) else []:
        rows = readable[readable["figure"] == fig]
        groups = [
            Group(key, lines, label=lines["configuration"].iloc[0], margin=margin)
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
                **outcome_columns(g),
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


def outcome_columns(g: Group) -> dict:
    """A line's outcome columns (zeroinit.outcomes, docs/report.md): never learned by its
    horizon with an exact interval, the mean's interval inside [0, 100], the mean over the runs
    that learned, runs that predict one class, the median steps to learn (Kaplan-Meier)."""
    runs = g.outcomes()
    done = runs[runs["status"] == "completed"]
    judged = done[done["learned"].notna()]
    k, n = int((~judged["learned"].astype(bool)).sum()), len(judged)
    low, high = outcomes.clopper_pearson(k, n)
    acc = done["final_acc"].to_numpy(float)
    acc_low, acc_high, method = outcomes.mean_interval(acc)
    learned = judged[judged["learned"].astype(bool)]["final_acc"].to_numpy(float)
    km = outcomes.time_to_learn(done)
    return {
        "never_learned": f"{k}/{n}" if n else "",
        "horizon_step": km["horizon"],
        "never_learned_rate_%": 100 * k / n if n else math.nan,
        "never_learned_ci95_low_%": 100 * low,
        "never_learned_ci95_high_%": 100 * high,
        "acc_ci95_low_%": 100 * acc_low,
        "acc_ci95_high_%": 100 * acc_high,
        "acc_ci95_method": method,
        "learned_n": len(learned),
        "learned_mean_acc_%": 100 * learned.mean() if len(learned) else math.nan,
        "final_test_loss": float(done["final_loss"].mean()) if len(done) else math.nan,
        "one_class": f"{int(done['one_class'].eq(True).sum())}/{len(done)}" if len(done) else "",
        "steps_to_learn_median": km["median"],
        "runs_final_acc_%": " ".join(f"{100 * v:.2f}" for v in sorted(acc)),
    }


def comparisons(figures: dict[str, list[Group]]) -> list[dict]:
    """Every pair of a figure's lines whose configs differ in one config group only (init,
    model, optimizer, ...): the difference in never-learned rate (Newcombe's interval,
    Fisher's exact test), in mean final accuracy, time to learn (log-rank) and, over the seeds
    both lines ran, the paired per-seed difference of final accuracy."""
    rows = []
    for fig, groups in figures.items():
        for i, a in enumerate(groups):
            for b in groups[i + 1 :]:
                ca, cb = (
                    {k: str(v) for k, v in g.config.items() if not ignored_by_report(k)}
                    for g in (a, b)
                )
                differs = {k.split(".")[0] for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)}
                if len(differs) != 1:
                    continue
                rows.append({"figure": fig, "differs_in": differs.pop(), **compare(a, b)})
    return rows


def compare(a: Group, b: Group) -> dict:
    ra, rb = (g.outcomes() for g in (a, b))
    da, db = (r[(r["status"] == "completed") & r["learned"].notna()] for r in (ra, rb))
    ka, kb = (int((~d["learned"].astype(bool)).sum()) for d in (da, db))
    diff, low, high = outcomes.newcombe(ka, len(da), kb, len(db))
    pair = outcomes.paired(ra, rb)
    acc_a, acc_b = (r.loc[r["status"] == "completed", "final_acc"].mean() for r in (ra, rb))
    return {
        "line_a": a.label,
        "line_b": b.label,
        "never_learned_a": f"{ka}/{len(da)}",
        "never_learned_b": f"{kb}/{len(db)}",
        "rate_diff_%": 100 * diff,
        "rate_diff_ci95_low_%": 100 * low,
        "rate_diff_ci95_high_%": 100 * high,
        "fisher_p": outcomes.fisher(ka, len(da), kb, len(db)),
        "acc_diff_%": 100 * (acc_a - acc_b),
        "logrank_p": outcomes.logrank(da, db),
        "paired_seeds": pair["n"],
        "paired_acc_diff_%": 100 * pair["mean"],
        "paired_ci95_low_%": 100 * pair["low"],
        "paired_ci95_high_%": 100 * pair["high"],
        "paired_ci95_method": pair["method"],
        "seeds_a_better": pair["wins_a"],
        "seeds_b_better": pair["wins_b"],
        "seeds_tied": pair["ties"],
        "sign_test_p": pair["sign_p"],
    }


def run_rows(figures: dict[str, list[Group]]) -> list[dict]:
    """One row per run: its line, seed, status and outcome (runs.csv)."""
    rows = []
    for fig, groups in figures.items():
        for g in groups:
            for r in g.outcomes().to_dict("records"):
                learned = r["learned"]
                r["learned"] = bool(learned) if isinstance(learned, (bool, np.bool_)) else None
                rows.append(
                    {
                        "figure": fig,
                        "configuration": g.label,
                        "seed": r["seed"],
                        "status": r["status"],
                        "epochs": r["epochs"],
                        "last_step": r["last_step"],
                        "final_test_acc_%": 100 * r["final_acc"]
                        if r["final_acc"] is not None
                        else math.nan,
                        "best_test_acc_%": 100 * r["best_acc"]
                        if r["best_acc"] is not None
                        else math.nan,
                        "final_test_loss": r["final_loss"],
                        "learned": r["learned"],
                        # censored: blank, and the step it is censored at
                        "steps_to_learn": _blank(r["learn_step"]),
                        "epochs_to_learn": _blank(r["learn_epoch"]),
                        "censored_at_step": r["last_step"] if r["learned"] is False else None,
                        "threshold_%": 100 * r["threshold"],
                        "top_class_frac": r["top_class_frac"],
                        "one_class": r["one_class"],
                        "stack_size": r["stack_size"],
                        "run": r["run"],
                    }
                )
    return rows


def _blank(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.2f}"
    return "" if v is None else str(v)


def write_csv(rows: list[dict], path: Path) -> Path:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    return path


def markdown(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def accuracy_cell(r: dict) -> str:
    """`mean [low, high]` of a line's final accuracy, or why there is no interval."""
    if not r["n"]:
        return ""
    if math.isnan(r["final_test_acc_%"]):  # NaN is not an accuracy: say so, not "nan"
        return "no finite accuracy"
    if math.isnan(r["acc_ci95_low_%"]):
        return f"{r['final_test_acc_%']:.2f} (n={r['n']}, no CI)"
    return (
        f"{r['final_test_acc_%']:.2f} [{r['acc_ci95_low_%']:.2f}, {r['acc_ci95_high_%']:.2f}]"
        f" {r['acc_ci95_method']}"
    )


def never_learned_cell(r: dict) -> str:
    if not r["never_learned"]:
        return ""
    return (
        f"{r['never_learned']} = {r['never_learned_rate_%']:.1f}% "
        f"[{r['never_learned_ci95_low_%']:.1f}, {r['never_learned_ci95_high_%']:.1f}]"
    )


def steps_cell(r: dict) -> str:
    if not r["never_learned"] or math.isnan(r["horizon_step"]):
        return ""
    median = r["steps_to_learn_median"]
    return f"{median:.0f}" if not math.isnan(median) else f">= {r['horizon_step']:.0f}"


OUTCOME_HEADER = [
    "figure",
    "configuration",
    "n",
    "final test acc % (mean [95% CI] method)",
    "never learned by step T (k/n = % [exact 95% CI])",
    "T (steps; epochs for runs without a step record)",
    "mean acc % of runs that learned (n)",
    "median steps to learn",
    "one class",
    "diverged",
    "failed",
    "running",
]
MORE = [  # the second table: what the first leaves out
    "epochs",
    "final_test_loss",
    "epochs_to_50%",
    "epochs_to_50%_ci95",
    "reached_50%",
    "mean_epoch_time_s",
    "paper_%",
]


def terminal_table(rows: list[dict]) -> str:
    """What the terminal shows of the tables: per figure, each line's outcome (never learned
    k/n with its interval, the final accuracy's mean with its interval, the mean of the runs
    that learned, the median steps to learn) and what did not complete; every other column is
    in results.md / results.csv (docs/report.md explains each)."""
    header = [
        "configuration",
        "n",
        "never learned [95% CI]",
        "by step",
        "final acc % [95% CI]",
        "learned: acc % (n)",
        "steps to learn",
        "not completed",
    ]
    out = []
    for fig in dict.fromkeys(r["figure"] for r in rows):
        body = []
        for r in (r for r in rows if r["figure"] == fig):
            rate = (
                f"{r['never_learned']} [{r['never_learned_ci95_low_%']:.1f}, "
                f"{r['never_learned_ci95_high_%']:.1f}%]"
                if r["never_learned"]
                else ""
            )
            left = ", ".join(f"{r[k]} {k}" for k in ("failed", "diverged", "running") if r.get(k))
            body.append(
                [
                    r["configuration"],
                    str(r["n"]),
                    rate,
                    f"epoch {r['epochs']}"
                    if math.isnan(r["horizon_step"])
                    else f"{r['horizon_step']:.0f}",
                    accuracy_cell(r),
                    f"{r['learned_mean_acc_%']:.2f} ({r['learned_n']})" if r["learned_n"] else "",
                    steps_cell(r) if r["never_learned"] else "",
                    left,
                ]
            )
        widths = [max(len(x) for x in col) for col in zip(header, *body)]
        out.append(fig)
        for cells in (header, *body):
            out.append("  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


def write_tables(rows: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """results.csv (every column) and results.md: the outcomes table, then the other columns."""
    csv_path, md_path = write_csv(rows, out_dir / "results.csv"), out_dir / "results.md"
    outcome = [
        [
            r["figure"],
            r["configuration"],
            r["n"],
            accuracy_cell(r),
            never_learned_cell(r),
            f"epoch {r['epochs']}" if math.isnan(r["horizon_step"]) else f"{r['horizon_step']:.0f}",
            f"{r['learned_mean_acc_%']:.2f} ({r['learned_n']})" if r["learned_n"] else "",
            steps_cell(r),
            r["one_class"],
            r["diverged"],
            r["failed"],
            r["running"],
        ]
        for r in rows
    ]
    diagnostics = [c for c in summary_columns({}) if any(c in r for r in rows)]
    shown = [c for c in MORE if c != "paper_%" or any(r.get(c) for r in rows)]  # the paper's
    more = ["figure", "configuration", *shown, *diagnostics]  # number only where it has one
    text = markdown(OUTCOME_HEADER, outcome)
    text += "\n" + markdown(more, [[r.get(c) for c in more] for r in rows])
    md_path.write_text(text.replace("| nan |", "|  |"))
    return csv_path, md_path


def comparisons_markdown(pairs: list[dict]) -> str:
    header = [
        "figure",
        "a",
        "b",
        "never learned a, b",
        "rate a - b % [Newcombe 95% CI]",
        "Fisher p",
        "log-rank p",
        "mean acc a - b %",
        "paired by seed: a - b % [95% CI] (seeds)",
        "seeds a better / b better / tied",
        "sign test p",
    ]
    body = [
        [
            p["figure"],
            p["line_a"],
            p["line_b"],
            f"{p['never_learned_a']}, {p['never_learned_b']}",
            f"{p['rate_diff_%']:.1f} [{p['rate_diff_ci95_low_%']:.1f}, "
            f"{p['rate_diff_ci95_high_%']:.1f}]",
            _p(p["fisher_p"]),
            _p(p["logrank_p"]),
            p["acc_diff_%"],
            f"{p['paired_acc_diff_%']:.2f} [{p['paired_ci95_low_%']:.2f}, "
            f"{p['paired_ci95_high_%']:.2f}] ({p['paired_seeds']})"
            if p["paired_seeds"] >= 2
            else "",
            f"{p['seeds_a_better']} / {p['seeds_b_better']} / {p['seeds_tied']}"
            if p["paired_seeds"]
            else "",
            _p(p["sign_test_p"]),
        ]
        for p in pairs
    ]
    return markdown(header, body).replace("nan [nan, nan]", "")


def _p(p: float) -> str:
    if p is None or math.isnan(p):
        return ""
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


def runs_markdown(rows: list[dict]) -> list[str]:
    """Per line, every completed run's final test accuracy (%), ascending; * never learned,
    (1) one class for every test image."""
    lines, key = [], None
    for r in sorted(rows, key=lambda r: (r["figure"], r["configuration"])):
        if (r["figure"], r["configuration"]) != key:
            key = (r["figure"], r["configuration"])
            lines.append({"label": f"- {key[0]}, {key[1]}:", "values": []})
        if r["status"] == "completed":
            mark = ("*" if r["learned"] is False else "") + ("(1)" if r["one_class"] else "")
            acc = r["final_test_acc_%"]
            lines[-1]["values"].append((acc, f"{acc:.2f}{mark}"))
    return [f"{x['label']} {' '.join(v for _, v in sorted(x['values']))}" for x in lines]


def write_tensorboard(figures: dict[str, list[Group]], out_dir: Path) -> Path | None:
    """Each figure's lines as TensorBoard runs (<out>/tensorboard/<figure>/<configuration>):
    the mean test accuracy per epoch over the line's completed runs and its 95% interval
    (tags test_mean_over_seeds/<figure>/acc, acc_ci95_low, acc_ci95_high: Group.band, inside
    [0, 1], the unit of every run's test/acc), the share of its runs that have not learned yet
    (not_learned_frac), its outcomes as text (never learned k/n, every run's final accuracy),
    and a Custom Scalars margin chart per figure drawing each line with its band. One
    TensorBoard run per line: `tensorboard --logdir <this folder>` selects them all, where a
    sweep's folder of more than 40 runs starts with none selected. Rewritten from the runs
    every time."""
    from torch.utils.tensorboard import SummaryWriter

    root = out_dir / "tensorboard"
    shutil.rmtree(root, ignore_errors=True)
    layout, first = {}, None
    for fig, groups in figures.items():
        tag = f"test_mean_over_seeds/{fig}/acc"
        for g in groups:
            epochs, mean, low, high, n, _ = g.band()
            if not n:
                continue
            row = outcome_columns(g)
            folder = root / fig / g.label.replace("/", "_").replace(" ", "_")
            with SummaryWriter(str(folder)) as w:
                left = g.not_learned_by_epoch()
                for epoch, m, lo, hi, nl in zip(epochs, mean, low, high, left):
                    lo, hi = (m, m) if math.isnan(lo) else (lo, hi)  # one run: a zero-width band
                    w.add_scalar(tag, m, int(epoch))  # 0-1, as every run's test/acc
                    w.add_scalar(f"{tag}_ci95_low", lo, int(epoch))
                    w.add_scalar(f"{tag}_ci95_high", hi, int(epoch))
                    w.add_scalar(f"test_mean_over_seeds/{fig}/not_learned_frac", nl, int(epoch))
                w.add_text(
                    f"outcomes/{fig}",
                    f"never learned by step {_fmt(row['horizon_step'])}: "
                    f"{never_learned_cell(row) or 'n/a'}; final test acc % of each run: "
                    f"{row['runs_final_acc_%']}",
                    int(epochs[-1]),
                )
            first = first or folder
        chart = f"test accuracy (0-1, as test/acc): mean and 95% CI over seeds, {fig}"
        layout[fig] = {chart: ["Margin", [tag, f"{tag}_ci95_low", f"{tag}_ci95_high"]]}
    if first is None:
        return None
    # The layout is read from any run of the log folder: a line's, so that the run list
    # holds the lines only (a layout of its own would be a run named ".").
    with SummaryWriter(str(first)) as w:
        w.add_custom_scalars(layout)
    return root


PALETTE = [  # matplotlib's tab10
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


def line_colours(labels: list[str]) -> dict[str, str]:
    """A colour per line label that stays the same from one report to the next (a line's
    colour comes from its label, not from its place among the figure's lines); two labels of
    one figure that would share a colour: the later one, in sorted order, takes the next free."""
    out, used = {}, set()
    for label in sorted(set(labels)):
        i = zlib.crc32(label.encode())
        for k in range(len(PALETTE)):
            colour = PALETTE[(i + k) % len(PALETTE)]
            if colour not in used or len(used) >= len(PALETTE):
                break
        out[label] = colour
        used.add(colour)
    return out


def plot_figure(name: str, groups: list[Group], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw_figure(name, groups)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_figure(name: str, groups: list[Group]):
    """The figure as a matplotlib Figure, three panels, one colour per line: test accuracy vs
    epoch (mean, its 95% interval as error bars where n >= 2, each run faintly behind; the
    logistic baseline dashed, as in the paper's figures); every run's final accuracy (hollow:
    never learned), chance and the learned threshold marked; and time to learn (Kaplan-Meier:
    % of runs not learned yet by step, a run that never learned censored at its last step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, strip, km) = plt.subplots(
        1, 3, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 2, 2]}
    )
    colours = line_colours([g.label for g in groups])
    jitter = np.random.default_rng(0)  # the same dots every time
    ns, thresholds, chances, drawn = set(), set(), set(), []
    for i, g in enumerate(groups):
        colour = colours[g.label]
        epochs, mean, low, high, n, _ = g.band()
        if not n:
            continue
        ns.add(n)
        drawn.append(g)
        baseline = g.config.get("model.name") == "logreg"
        for values in g.per_epoch() if n <= 60 else []:
            ax.plot(epochs, 100 * values, color=colour, alpha=0.25, linewidth=0.7)
        ax.errorbar(
            epochs,
            100 * mean,
            # clipped at 0: the mean of n equal values can differ from them in the last bit
            yerr=None if n < 2 else 100 * np.maximum(0, np.array([mean - low, high - mean])),
            capsize=3,
            marker="o",
            markersize=3,
            color=colour,
            linestyle="--" if baseline else "-",
            label=f"{g.label} (logistic baseline)"
            if baseline and "logreg" not in g.label
            else g.label,
        )
        runs = g.outcomes()
        done = runs[runs["status"] == "completed"]
        thresholds |= set(done["threshold"].round(6))
        chances |= set(done["chance"].round(6))
        x = len(drawn) - 1 + jitter.uniform(-0.25, 0.25, len(done))
        never = done["learned"].eq(False).to_numpy()
        strip.scatter(x[~never], 100 * done["final_acc"][~never], s=14, color=colour, alpha=0.7)
        strip.scatter(
            x[never], 100 * done["final_acc"][never], s=22, facecolors="none", edgecolors=colour
        )
        curve = outcomes.time_to_learn(done)
        if curve["n"]:
            left = 100 * np.array(curve["not_learned"])
            style = ("-", "--", "-.", ":")[i % 4]  # lines that drop at one step stay visible
            km.step(curve["steps"], left, where="post", color=colour, linestyle=style)
    for level, style in [(c, ":") for c in chances] + [(t, "--") for t in thresholds]:
        if not math.isnan(level):
            strip.axhline(100 * level, color="grey", linestyle=style, linewidth=0.8)
    c = groups[0].config
    models = sorted({g.config.get("model.name") for g in groups})
    n_text = f"n={min(ns)}" if len(ns) == 1 else f"n={min(ns)}-{max(ns)}" if ns else "n=0"
    what = (
        "mean ± 95% CI"
        if ns and min(ns) >= 2
        else "mean"
        if ns and max(ns) < 2
        else "mean (± 95% CI where n >= 2)"
    )
    ax.set_title(
        f"{c.get('sweep_name', name)}: {c.get('dataset.name')}, {' + '.join(models)}\n"
        f"{n_text} runs per line, {what}; each run faint",
        fontsize=9,
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylim(max(0, ax.get_ylim()[0]), min(100, ax.get_ylim()[1]))
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax.grid(alpha=0.3)
    labels = [g.label for g in drawn]
    longest = max(map(len, labels), default=0)
    numbered = (
        longest > 24
    )  # long labels: the strip's ticks number the lines, the legend names them
    ticks = [str(i) for i in range(1, len(drawn) + 1)] if numbered else labels
    strip.set_xticks(
        range(len(drawn)),
        ticks,
        rotation=0 if numbered else 30,
        ha="center" if numbered else "right",
        fontsize=7,
    )
    strip.set_ylabel("final test accuracy (%)")
    strip.set_title(
        "each run's final accuracy (hollow: never learned)\n"
        "dotted: chance, dashed: learned threshold",
        fontsize=9,
    )
    strip.grid(alpha=0.3, axis="y")
    km.set(xlabel="optimizer steps", ylabel="runs not learned yet (%)", ylim=(-3, 103))
    km.set_title("time to learn (Kaplan-Meier)\ncensored at a run's last step", fontsize=9)
    km.grid(alpha=0.3)
    ncol = min(4 if longest < 35 else 2 if longest < 70 else 1, max(1, len(drawn)))
    handles, names = ax.get_legend_handles_labels()
    fig.legend(
        handles,
        [f"{i}: {n}" for i, n in enumerate(names, 1)] if numbered else names,
        loc="lower center",
        ncol=ncol,
        fontsize=8,
        frameon=False,
    )
    rows = -(-max(1, len(drawn)) // ncol)  # a long label gets fewer columns, all on the page
    fig.tight_layout(rect=(0, 0.03 + 0.035 * rows, 1, 1))
    return fig


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

"""Does a zero-weight scheme's lower rank track its accuracy gap? (docs/findings.md, "Rank and
accuracy"). From the runs on disk (zeroinit.results.load): per completed run with
diagnostics, the final effective rank of its first layer (`erank_first`) against its final
test accuracy; Spearman's rank correlation over all runs and within each model, each with a
95% bootstrap interval (runs resampled with replacement), and the scatter plot.

    python src/report.py outputs/sweeps/fig03_mnist_fnn outputs/sweeps/fig04_... --rank-vs-accuracy
"""

import math

import numpy as np

RESAMPLES = 2000  # bootstrap resamples; seeded, so a report is the same twice


def final_runs(frame):
    """One row per completed run with a first-layer effective rank: its last epoch. Logistic
    regression is left out: its only layer is the output layer, not a hidden one."""
    if frame.empty or "erank_first" not in frame.columns:
        return frame.iloc[0:0]
    done = frame[frame["status"].eq("completed") & frame["has_diagnostics"].eq(True)]
    done = done[done["model.name"] != "logreg"].dropna(subset=["erank_first", "test_acc"])
    last = done.sort_values("epoch").groupby("run").tail(1)
    # The same configuration and seed in two sweeps (Figure 4's x1 lines are Figure 3's) is
    # one experiment run twice: counted once.
    return last.drop_duplicates(subset=["line", "seed"])


def spearman_ci(x, y, level: float = 0.95, seed: int = 0) -> tuple[float, float, float, int]:
    """(rho, low, high, n): Spearman's rho and its percentile bootstrap interval. NaN where
    it is undefined (fewer than 4 runs, or a constant column)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan, n
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(RESAMPLES):
        i = rng.integers(0, n, n)
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            draws.append(stats.spearmanr(x[i], y[i]).statistic)
    low, high = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return rho, float(low), float(high), n


def correlation_rows(runs) -> list[dict]:
    """Spearman's rho of erank_first vs final test accuracy: all runs, the zero-weight
    schemes' runs alone (does their rank track their accuracy, not just pytorch vs the
    rest?), then each model."""
    rows = []
    zero = runs[runs["init.weight"] == "zero"] if "init.weight" in runs else runs.iloc[0:0]
    # The paper's schemes: zero weights, random biases. All-zero init (Figures 7, 10) never
    # learns and keeps rank 0: points that would make any correlation look strong.
    random = zero[zero["init.bias"].isin(["normal", "uniform"])] if len(zero) else zero
    # Figure 4's x100 runs are far less accurate and lower in rank than every other run:
    # without them, whether the rank still tracks the accuracy
    unscaled = random[random["init.bias_scale"] <= 1] if len(random) else random
    groups = [
        ("all models", runs),
        ("zero-weight inits", zero),
        ("zero weights, random biases", random),
        ("zero weights, random biases, bias scale <= 1", unscaled),
    ]
    groups += [(m, g) for m, g in runs.groupby("model.name")]
    # within one model (ranks of different layer shapes do not compare across models)
    groups += [(f"{m}, zero weights, random biases", g) for m, g in random.groupby("model.name")]
    for name, g in groups:
        rho, low, high, n = spearman_ci(g["erank_first"], g["test_acc"])
        rows.append({"runs": name, "n": n, "rho": rho, "ci95_low": low, "ci95_high": high})
    return rows


def line_rows(runs) -> list[dict]:
    """Per configuration (one line key, whichever figures it is in): n, mean first-layer
    effective rank and final test accuracy (%), each with its 95% Student-t half-width."""
    from zeroinit.report import mean_ci

    rows = []
    for _, g in runs.groupby("line"):
        first = g.iloc[0]
        model = first["model.name"]
        label = f"{first['init.name']} x{first['init.bias_scale']:g}"
        erank, erank_h = mean_ci(g[["erank_first"]].to_numpy(float))
        acc, acc_h = mean_ci(100 * g[["test_acc"]].to_numpy(float))
        rows.append(
            {
                "model": model,
                "configuration": label,
                "n": len(g),
                "erank_first": float(erank[0]),
                "erank_ci95": float(erank_h[0]),
                "test_acc_%": float(acc[0]),
                "acc_ci95": float(acc_h[0]),
            }
        )
    return sorted(rows, key=lambda r: (r["model"], r["configuration"]))


def plot(runs, path) -> None:
    """Effective rank of the first layer vs final test accuracy, one point per run, coloured
    by init and bias scale, one marker per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = dict(zip(sorted(runs["model.name"].unique()), "os^Dv"))
    keys = runs["init.name"] + " x" + runs["init.bias_scale"].map(lambda v: f"{v:g}")
    colors = dict(zip(sorted(keys.unique()), plt.cm.tab10.colors))
    for (model, key), g in runs.groupby([runs["model.name"], keys]):
        ax.scatter(
            g["erank_first"],
            100 * g["test_acc"],
            marker=markers[model],
            color=colors[key],
            alpha=0.8,
            label=f"{model}: {key}",
        )
    ax.set_xscale("symlog", linthresh=1)  # an all-zero layer has rank 0
    ax.set_xlabel("effective rank of the first layer (final)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(f"{len(runs)} runs, one point each", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(frame, out_dir) -> str | None:
    """The section for report.md (Markdown) and rank_vs_accuracy.png; None without runs."""
    runs = final_runs(frame)
    if runs.empty:
        return None
    plot(runs, out_dir / "rank_vs_accuracy.png")
    lines = [
        "## Rank and accuracy",
        "",
        "Spearman's rank correlation of the first layer's final effective rank with the final "
        "test accuracy, one point per completed run (95% percentile bootstrap interval, "
        f"{RESAMPLES} resamples of the runs):",
        "",
        "| runs | n | rho | 95% CI |",
        "|---|---|---|---|",
    ]
    for r in correlation_rows(runs):
        ci = "" if math.isnan(r["ci95_low"]) else f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]"
        rho = "" if math.isnan(r["rho"]) else f"{r['rho']:.2f}"
        lines.append(f"| {r['runs']} | {r['n']} | {rho} | {ci} |")
    lines += [
        "",
        "| model | configuration | n | effective rank, first layer | final test acc % |",
        "|---|---|---|---|---|",
    ]
    for r in line_rows(runs):
        lines.append(
            f"| {r['model']} | {r['configuration']} | {r['n']} | "
            f"{r['erank_first']:.1f} ± {r['erank_ci95']:.1f} | "
            f"{r['test_acc_%']:.2f} ± {r['acc_ci95']:.2f} |"
        )
    lines += ["", "![rank vs accuracy](rank_vs_accuracy.png)"]
    return "\n".join(lines)

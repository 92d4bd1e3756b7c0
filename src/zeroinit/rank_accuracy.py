"""Does a zero-weight scheme's lower rank track its accuracy gap? (docs/findings.md, "Rank and
accuracy"). From the runs on disk (zeroinit.results.load): per completed run, the effective
rank of its first layer's final weight W (`erank_first`, from the diagnostics) and of what
training changed, W - W0 (`erank_change_first`: W from the run's checkpoints/last.ckpt, W0
rebuilt from its config and seed, which draw it bitwise again), against its final test
accuracy. At zero init W0 holds no weights but W is what the biases and the first steps wrote,
so W - W0 is the question's quantity; W is kept, labelled, beside it.

Runs of one configuration (a report line) are not independent points: Spearman's rho comes
with a cluster bootstrap interval that resamples configurations, each with all its runs.

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


def spearman_ci(
    x, y, clusters=None, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float, int, int]:
    """(rho, low, high, n, k): Spearman's rho over the n runs and its percentile bootstrap
    interval, resampling the k `clusters` (configurations; default: every run its own) with
    all their runs. NaN where undefined (fewer than 4 runs or 3 clusters, a constant column)."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    labels = np.arange(n) if clusters is None else np.asarray(clusters)
    groups = [np.flatnonzero(labels == c) for c in dict.fromkeys(labels.tolist())]
    k = len(groups)
    if n < 4 or k < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan, math.nan, n, k
    rho = float(stats.spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(RESAMPLES):
        i = np.concatenate([groups[j] for j in rng.integers(0, k, k)])
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            draws.append(stats.spearmanr(x[i], y[i]).statistic)
    low, high = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return rho, float(low), float(high), n, k


def rank_change(run_dir) -> dict:
    """The effective rank of W - W0 of the run's first Linear/Conv layer and the mean over
    its layers (NaN without a checkpoint). W0 is rebuilt as the run drew it (its config and
    seed: zeroinit.run.build_net), in the checkpoint's dtype."""
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    from omegaconf import OmegaConf

    from zeroinit.init import INIT_LAYERS
    from zeroinit.layer_metrics import weight_metrics
    from zeroinit.results import read_results
    from zeroinit.run import build_net

    ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    results = read_results(Path(run_dir)) if ckpt.exists() else {}
    if "config" not in results:
        return {"erank_change_first": math.nan, "erank_change_mean": math.nan}
    cfg = OmegaConf.create(results["config"])
    # (runs written before results.json kept the input shape: the dataset's config has it,
    # except for an image folder's)
    input_shape = results.get("input_shape") or cfg.dataset.get("input_shape")
    if input_shape is None:
        return {"erank_change_first": math.nan, "erank_change_mean": math.nan}
    shape = SimpleNamespace(input_shape=tuple(input_shape), num_classes=int(results["num_classes"]))
    net = build_net(cfg, shape)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    ranks = []
    for name, m in net.named_modules():
        if isinstance(m, INIT_LAYERS):
            w = state[f"net.{name}.weight"].double()
            ranks.append(weight_metrics(w - m.weight.detach().double())["effective_rank"])
    return {"erank_change_first": ranks[0], "erank_change_mean": float(np.mean(ranks))}


RANKS = {  # column -> what it is, as the report labels it
    "erank_change_first": "W - W0 (what training changed)",
    "erank_first": "W (final weight, biases' and first steps' imprint included)",
}


def with_change_ranks(runs):
    """`runs` with erank_change_first / erank_change_mean from each run's checkpoint."""
    changes = [rank_change(run) for run in runs["run"]]
    runs = runs.copy()
    for key in ("erank_change_first", "erank_change_mean"):
        runs[key] = [c[key] for c in changes]
    return runs


def correlation_rows(runs, column: str = "erank_first") -> list[dict]:
    """Spearman's rho of `column` vs final test accuracy, with configurations (report lines)
    as the bootstrap's clusters: all runs, the zero-weight schemes' runs alone (does their
    rank track their accuracy, not just pytorch vs the rest?), then each model."""
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
        g = g.dropna(subset=[column])
        rho, low, high, n, k = spearman_ci(g[column], g["test_acc"], g["line"])
        rows.append(
            {
                "runs": name,
                "n": n,
                "configurations": k,
                "rho": rho,
                "ci95_low": low,
                "ci95_high": high,
            }
        )
    return rows


def _values(values, fmt: str) -> str:
    return " ".join(fmt.format(v) for v in values)


def line_rows(runs) -> list[dict]:
    """Per configuration (one line key, whichever figures it is in): n, and every run's
    first-layer effective ranks (W - W0 and W) and final test accuracy (%), in seed order:
    an accuracy line can be bimodal (runs at chance beside learned ones), which no mean with
    an interval describes."""
    rows = []
    for _, g in runs.groupby("line"):
        g = g.sort_values("seed")
        first = g.iloc[0]
        rows.append(
            {
                "model": first["model.name"],
                "configuration": f"{first['init.name']} x{first['init.bias_scale']:g}",
                "n": len(g),
                "erank_change_first": _values(g.get("erank_change_first", []), "{:.1f}"),
                "erank_first": _values(g["erank_first"], "{:.1f}"),
                "test_acc_%": _values(100 * g["test_acc"], "{:.1f}"),
            }
        )
    return sorted(rows, key=lambda r: (r["model"], r["configuration"]))


def plot(runs, path, column: str = "erank_change_first") -> None:
    """Effective rank of the first layer (`column`) vs final test accuracy, one point per
    run, coloured by init and bias scale, one marker per model; the legend beside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    markers = dict(zip(sorted(runs["model.name"].unique()), "os^Dv"))
    keys = runs["init.name"] + " x" + runs["init.bias_scale"].map(lambda v: f"{v:g}")
    colors = dict(zip(sorted(keys.unique()), plt.cm.tab10.colors))
    for (model, key), g in runs.groupby([runs["model.name"], keys]):
        ax.scatter(
            g[column],
            100 * g["test_acc"],
            marker=markers[model],
            color=colors[key],
            alpha=0.8,
            label=f"{model}: {key}",
        )
    ax.set_xscale("symlog", linthresh=1)  # an all-zero layer has rank 0
    ax.set_xlabel(f"effective rank of the first layer's {RANKS[column].split(' (')[0]} (final)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{len(runs)} runs, one point each", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(frame, out_dir) -> str | None:
    """The section for report.md (Markdown) and rank_vs_accuracy.png; None without runs."""
    runs = final_runs(frame)
    if runs.empty:
        return None
    runs = with_change_ranks(runs)
    column = "erank_change_first" if runs["erank_change_first"].notna().any() else "erank_first"
    plot(runs, out_dir / "rank_vs_accuracy.png", column)
    lines = [
        "## Rank and accuracy",
        "",
        "Spearman's rank correlation of the first layer's final effective rank with the final "
        "test accuracy, one point per completed run; 95% percentile bootstrap interval, "
        f"{RESAMPLES} resamples of the configurations (each with all its runs: runs of one "
        "configuration are not independent points).",
    ]
    for col, what in RANKS.items():
        rows = correlation_rows(runs, col)
        if not any(r["n"] for r in rows):
            continue
        lines += [
            "",
            f"Effective rank of {what}:",
            "",
            "| runs | n | configurations | rho | 95% CI |",
            "|---|---|---|---|---|",
        ]
        for r in rows:
            ci = "" if math.isnan(r["ci95_low"]) else f"[{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]"
            rho = "" if math.isnan(r["rho"]) else f"{r['rho']:.2f}"
            lines.append(f"| {r['runs']} | {r['n']} | {r['configurations']} | {rho} | {ci} |")
    lines += [
        "",
        "Every run, in seed order:",
        "",
        "| model | configuration | n | effective rank of W - W0, first layer | of W | final "
        "test acc % |",
        "|---|---|---|---|---|---|",
    ]
    for r in line_rows(runs):
        lines.append(
            f"| {r['model']} | {r['configuration']} | {r['n']} | {r['erank_change_first']} | "
            f"{r['erank_first']} | {r['test_acc_%']} |"
        )
    lines += ["", "![rank vs accuracy](rank_vs_accuracy.png)"]
    return "\n".join(lines)

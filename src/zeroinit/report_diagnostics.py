"""The report's view of a run's diagnostics (results.json "diagnostics": its schema is
zeroinit/diagnostics/record.py, written by the callback there): a few summary columns per
run for the report's tables, and the paper's Figure 12 (gradient flow over the first
steps)."""

import numpy as np


def summary_columns(results: dict) -> dict[str, float]:
    """A few scalars of a run's diagnostics for a report table (NaN where not measured):

    wakeup_all       step at which the last layer woke (NaN if one never did)
    erank_mean       effective rank, mean over layers (final)
    erank_first      effective rank of the first layer (final)
    nrank_frac_min   min over layers of numerical rank / min(out, fan_in) (final)
    distinct_frac_min  min over layers of distinct units / units (final): 1 = every unit has
                     its own direction, 1/units = all alike
    dead_frac_mean   fraction of dead units, mean over layers with an activation (final)
    """
    nan = float("nan")
    out = dict.fromkeys(
        (
            "wakeup_all",
            "erank_mean",
            "erank_first",
            "nrank_frac_min",
            "distinct_frac_min",
            "dead_frac_mean",
        ),
        nan,
    )
    diag = (results or {}).get("diagnostics")
    if not diag:
        return out
    wake = list((diag.get("wakeup_step") or {}).values())
    if wake and all(v is not None for v in wake):
        out["wakeup_all"] = float(max(wake))
    final = (diag.get("symmetry") or {}).get("final") or {}
    layers = [layer for layer in diag.get("layers", []) if layer["name"] in final]

    def per_layer(key, scale=lambda layer: 1):
        return [
            final[lay["name"]][key] / scale(lay)
            for lay in layers
            if final[lay["name"]].get(key) is not None
        ]

    if erank := per_layer("effective_rank"):
        out["erank_mean"] = float(np.mean(erank))
    if layers and final[layers[0]["name"]].get("effective_rank") is not None:
        out["erank_first"] = float(final[layers[0]["name"]]["effective_rank"])
    if fracs := per_layer("numerical_rank", lambda lay: min(lay["units"], lay["fan_in"])):
        out["nrank_frac_min"] = float(min(fracs))
    if distinct := per_layer("distinct_units", lambda lay: lay["units"]):
        out["distinct_frac_min"] = float(min(distinct))
    if dead := per_layer("dead_units_frac"):
        out["dead_frac_mean"] = float(np.mean(dead))
    return out


def _central_range(edges, counts, tail=0.005):
    """[lo, hi] holding all but `tail` of the entries at either end of a histogram."""
    if edges[0] == edges[-1]:
        return edges[0], edges[-1]
    cum = np.cumsum(counts) / max(sum(counts), 1)
    lo = edges[int(np.searchsorted(cum, tail))]
    hi = edges[int(np.searchsorted(cum, 1 - tail)) + 1]
    return min(lo, 0.0), max(hi, 0.0)  # keep 0 in view: sleeping layers sit there


def plot_gradient_flow(results_by_init: dict[str, dict], path, max_steps: int | None = None):
    """Figure 12: per-layer weight-gradient distributions over the first steps, one column per
    init (in the given order, e.g. pytorch beside bias_normal), one row per layer from input
    to output. Each step is a ridge (normalized histogram), later steps higher up; a sleeping
    layer's all-zero gradient is drawn as a spike at 0 and labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {
        init: r["diagnostics"]
        for init, r in results_by_init.items()
        if (r.get("diagnostics") or {}).get("first_steps", {}).get("step")
    }
    if not runs:
        raise ValueError("no run has diagnostics.first_steps (was the diagnostics callback on?)")
    n_rows = max(len(d["layers"]) for d in runs.values())
    fig, axes = plt.subplots(
        n_rows, len(runs), figsize=(4.2 * len(runs), 1.9 * n_rows + 0.6), squeeze=False
    )
    for col, (init, diag) in enumerate(runs.items()):
        steps = diag["first_steps"]["step"][:max_steps]
        colors = plt.cm.viridis(np.linspace(0, 0.85, max(len(steps), 1)))
        for row in range(n_rows):
            ax = axes[row][col]
            if row >= len(diag["layers"]):
                ax.axis("off")
                continue
            layer = diag["layers"][row]
            entry = diag["first_steps"]["layers"][layer["name"]]
            # x range: where 99% of each step's entries lie, so a few outliers don't squash
            # the distributions (they are drawn, just off the axis)
            ranges = [
                _central_range(e, c)
                for e, c in zip(entry["hist_edges"][: len(steps)], entry["hist_counts"])
            ]
            lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
            span = (hi - lo) or 1.0
            ax.set_xlim(lo - 0.05 * span, hi + 0.05 * span)
            for i, (step, edges, counts) in enumerate(
                zip(steps, entry["hist_edges"], entry["hist_counts"])
            ):
                base = i
                if edges[0] == edges[-1]:  # constant gradient: a spike
                    ax.plot([edges[0]] * 2, [base, base + 0.85], color=colors[i], lw=2)
                    if edges[0] == 0:
                        ax.text(
                            lo + 0.02 * span,
                            base + 0.3,
                            f"step {step}: all zero",
                            fontsize=7,
                            color=colors[i],
                        )
                    continue
                heights = np.asarray(counts, float)
                heights = 0.85 * heights / heights.max() if heights.max() > 0 else heights
                ax.fill_between(
                    np.repeat(edges, 2)[1:-1],
                    base,
                    base + np.repeat(heights, 2),
                    color=colors[i],
                    alpha=0.6,
                    lw=0,
                )
            ax.set_yticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
            ax.set_ylim(-0.1, len(steps))
            ax.tick_params(axis="x", labelsize=7)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
            ax.xaxis.get_offset_text().set_fontsize(7)
            shape = "x".join(map(str, layer["shape"]))
            wake = diag.get("wakeup_step", {}).get(layer["name"])
            ax.set_title(
                f"{init}: layer {layer['name']} ({layer['type']} {shape}), wakes at step {wake}",
                fontsize=8,
            )
            if col == 0:
                ax.set_ylabel("step", fontsize=8)
    fig.suptitle(
        "Weight-gradient distribution per layer over the first steps (input at top)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

"""Reading the rounding-vs-padding study (experiment=bn_padding, docs/findings.md): one row per
run and one per cell (precision x Adam eps x padding x BatchNorm mode x offset), from each run's
results.json (its config, epochs, diagnostics' wake-up steps and border split).

    python src/bn_study.py padding          # trains the cells (zeroinit.findings.PADDING_SWEEPS)
    python src/bn_study.py padding-report   # -> {runs,cells}.csv, wake.png, curves.png, stdout

"Learned" is the report's rule (zeroinit.outcomes): test accuracy at an epoch end >= chance + 5
points; "steps to learn" is that epoch's last step, censored (">= T") at the run's last step.
"""

import csv
import math
from pathlib import Path

from zeroinit.outcomes import MARGIN, clopper_pearson
from zeroinit.results import read_results

CELL_KEYS = ("precision", "adam_eps", "padding", "bn", "offset", "noise")
CONVS_AFTER_BN = ("6", "12")  # cifar_cnn: the first conv after BatchNorm 1 and 2


def precision_of(config: dict) -> str:
    """fp64, bf16, tf32 (speed=tf32: TF32 matmuls and convs on a GPU) or fp32."""
    precision = str(config["trainer"].get("precision"))
    if "64" in precision:
        return "fp64"
    if "bf16" in precision:
        return "bf16"
    speed = config.get("speed") or {}
    return "tf32" if speed.get("tf32") else "fp32"


def data_label(config: dict) -> str:
    """What a figure says its data is: the embedded digits, or an image folder by name."""
    dataset = config.get("dataset") or {}
    if dataset.get("name") == "mnist5k":
        return "embedded digits"
    if dataset.get("name") == "image_folder":
        folder = Path(str(dataset.get("data_dir"))).name
        return "CIFAR-10, JPEG copy" if folder == "cifar10-jpeg" else f"image folder {folder}"
    return str(dataset.get("name"))


def cell_of(config: dict) -> dict:
    perturb = config.get("perturb") or {}
    return {
        "precision": precision_of(config),
        "adam_eps": float(config["optimizer"].get("eps", 1e-8)),
        "padding": config["model"].get("padding_mode", "zeros"),
        "bn": "exact" if perturb.get("exact_bn") else "native",
        "offset": float(perturb.get("bn_offset") or 0.0),
        "noise": float(perturb.get("bn_noise") or 0.0),
    }


def run_row(results: dict) -> dict:
    config = results["config"]
    epochs = [e for e in results.get("epochs", []) if e.get("test_acc") is not None]
    per_epoch = len(epochs) and (epochs[-1].get("step") or 0) / len(epochs)
    chance = 1 / int(results.get("num_classes") or 10)
    learned = next((e for e in epochs if e["test_acc"] >= chance + MARGIN), None)
    last_step = epochs[-1].get("step") if epochs else 0
    diag = results.get("diagnostics") or {}
    wake = diag.get("wakeup_step") or {}
    convs = [layer["name"] for layer in diag.get("layers", []) if layer["type"] == "Conv2d"]
    border = (results.get("border_split") or {}).get("layers") or {}
    row = {
        **cell_of(config),
        "data": data_label(config),
        "seed": config["seed"],
        "status": results.get("status"),
        "final_acc": epochs[-1]["test_acc"] if epochs else math.nan,
        "learned": learned is not None,
        "learn_step": learned.get("step") if learned else math.nan,
        "last_step": last_step,
        "steps_per_epoch": per_epoch,
        "convs_woken": sum(wake.get(c) is not None for c in convs),
        "convs": len(convs),
        "all_convs_woken_at": (
            max(wake[c] for c in convs) if convs and all(wake.get(c) for c in convs) else None
        ),
        "acc_by_epoch": " ".join(f"{e['test_acc']:.3f}" for e in epochs),
    }
    for layer, step in wake.items():
        row[f"wake_{layer}"] = step
    for conv, entry in border.items():
        measured = entry.get("constant_steps", 1) > 0  # the split holds for a constant input only
        for key in ("border_first_nonzero", "interior_first_nonzero", "border_max", "interior_max"):
            row[f"{key}_{conv}"] = entry[key] if measured else None
    return row


def collect(root: Path) -> list[dict]:
    rows = []
    for path in sorted(Path(root).glob("*/results.json")):
        results = read_results(path.parent)
        if results.get("status") == "completed":
            rows.append(run_row(results))
    return rows


def cells(rows: list[dict]) -> list[dict]:
    """One summary per cell, in a fixed order (precision, eps, padding, bn, offset, noise)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in CELL_KEYS), []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], -k[1], k[2] != "zeros", k[3], k[4], k[5])):
        runs = sorted(groups[key], key=lambda r: r["seed"])
        n, never = len(runs), sum(not r["learned"] for r in runs)
        low, high = clopper_pearson(never, n)
        horizon = max(r["last_step"] for r in runs)
        entry = dict(zip(CELL_KEYS, key))
        entry.update(
            n=n,
            never_learned=never,
            never_low=low,
            never_high=high,
            horizon=horizon,
            steps_to_learn=" ".join(
                str(int(r["learn_step"])) if r["learned"] else f">={r['last_step']}" for r in runs
            ),
            final_acc=" ".join(f"{100 * r['final_acc']:.1f}" for r in runs),
            convs_woken=" ".join(f"{r['convs_woken']}/{r['convs']}" for r in runs),
            all_convs_woken_at=" ".join(
                str(r["all_convs_woken_at"]) if r["all_convs_woken_at"] else "never" for r in runs
            ),
        )
        for conv in CONVS_AFTER_BN:
            for term in ("border", "interior"):
                values = [r.get(f"{term}_max_{conv}") for r in runs]
                values = [v for v in values if v is not None]
                entry[f"{term}_max_{conv}"] = max(values) if values else math.nan
        out.append(entry)
    return out


def _eps(value: float) -> str:
    return "0" if value == 0 else f"{value:.0e}".replace("e-0", "e-")


def cell_name(cell: dict) -> str:
    bn = "native BN" if cell["bn"] == "native" else f"exact BN + {_eps(cell['offset'])}"
    if cell["bn"] == "native" and cell["offset"]:
        bn += f" + offset {_eps(cell['offset'])}"
    if cell["noise"]:
        bn += f", noise {_eps(cell['noise'])}"
    return f"{cell['precision']}, Adam eps {_eps(cell['adam_eps'])}, {cell['padding']}, {bn}"


def _split(cell: dict, conv: int) -> str:
    border, interior = cell[f"border_max_{conv}"], cell[f"interior_max_{conv}"]
    if math.isnan(border) and math.isnan(interior):
        return "input never constant"  # nothing to split (the noise arm)
    return f"{border:.1e} / {interior:.1e}"


def markdown(table: list[dict]) -> str:
    lines = [
        "| precision | Adam eps | padding | BatchNorm | n | never learned by the last step "
        "[95% CI] | steps to chance + 5 points, per run | final test acc %, per run | convs "
        "woken, per run | step all convs had woken | conv 6 border / interior max | conv 12 "
        "border / interior max |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in table:
        bn = "native" if c["bn"] == "native" else f"exact + {_eps(c['offset'])}"
        if c["noise"]:
            bn += f", noise {_eps(c['noise'])}"
        lines.append(
            f"| {c['precision']} | {_eps(c['adam_eps'])} | {c['padding']} | {bn} | {c['n']} | "
            f"{c['never_learned']}/{c['n']} [{100 * c['never_low']:.0f}, "
            f"{100 * c['never_high']:.0f}%] by {c['horizon']} | {c['steps_to_learn']} | "
            f"{c['final_acc']} | {c['convs_woken']} | {c['all_convs_woken_at']} | "
            f"{_split(c, 6)} | {_split(c, 12)} |"
        )
    return "\n".join(lines)


def wake_figure(rows: list[dict], path: Path) -> None:
    """Step by which every conv had woken, against the BatchNorm offset (exact BatchNorm;
    native rounding drawn at the left), one marker per run; never: drawn at the horizon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for r in rows:
        if r["noise"] or r["adam_eps"] not in (1e-8, 1e-20):
            continue
        key = (r["precision"], r["adam_eps"], r["padding"])
        series.setdefault(key, []).append(r)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    positions = {"native": 1e-14, 0.0: 1e-13}
    for i, (key, runs) in enumerate(sorted(series.items())):
        xs, ys, never = [], [], []
        for r in runs:
            x = positions["native"] if r["bn"] == "native" else (r["offset"] or positions[0.0])
            x *= 10 ** (0.06 * (i - len(series) / 2))  # side by side, not on top
            if r["all_convs_woken_at"]:
                xs.append(x)
                ys.append(r["all_convs_woken_at"])
            else:
                never.append((x, r["last_step"]))
        label = f"{key[0]}, Adam eps {_eps(key[1])}, {key[2]}"
        (line,) = ax.plot(xs, ys, "o", label=label, alpha=0.8)
        if never:
            ax.plot(*zip(*never), "^", color=line.get_color(), alpha=0.8)
    ax.set_xscale("log")
    ax.set_xticks([1e-14, 1e-13, 1e-11, 1e-8, 1e-5])
    ax.set_xticklabels(
        ["native\nrounding", "exact\n+ 0", "exact\n+ 1e-11", "exact\n+ 1e-8", "exact\n+ 1e-5"]
    )
    ax.set_ylabel("step by which every conv had woken\n(triangle: not all by the last step)")
    data = ", ".join(sorted({r["data"] for r in rows}))
    ax.set_title(f"cifar_cnn, {data}: when the convs wake", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bn_mode(r: dict) -> str:
    mode = "native" if r["bn"] == "native" else f"exact + {_eps(r['offset'])}"
    return mode + (f", noise {_eps(r['noise'])}" if r["noise"] else "")


def curves_figure(rows: list[dict], path: Path) -> None:
    """Every run's test accuracy per epoch: one panel per precision x Adam eps (rows) and
    padding (columns), one colour per BatchNorm mode, the legend beside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    settings = sorted({(r["precision"], r["adam_eps"]) for r in rows}, key=lambda k: (k[0], -k[1]))
    paddings = sorted({r["padding"] for r in rows}, key=lambda p: p != "zeros")
    modes = sorted({_bn_mode(r) for r in rows}, key=lambda m: (m != "native", m))
    colors = dict(zip(modes, plt.cm.tab10.colors))
    fig, axes = plt.subplots(
        len(settings),
        len(paddings),
        figsize=(4.2 * len(paddings) + 2.4, 2.3 * len(settings)),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for i, (precision, eps) in enumerate(settings):
        for j, padding in enumerate(paddings):
            ax = axes[i][j]
            for r in rows:
                if (r["precision"], r["adam_eps"], r["padding"]) != (precision, eps, padding):
                    continue
                acc = [100 * float(a) for a in r["acc_by_epoch"].split()]
                ax.plot(range(1, len(acc) + 1), acc, color=colors[_bn_mode(r)], alpha=0.75)
            ax.set_title(f"{precision}, Adam eps {_eps(eps)}, {padding} padding", fontsize=8)
            ax.set_ylim(0, 100)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.axhline(15, color="grey", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("test acc %", fontsize=8)
            if i == len(settings) - 1:
                ax.set_xlabel("epoch", fontsize=8)
    handles = [plt.Line2D([], [], color=colors[m], label=m) for m in modes]
    fig.legend(handles=handles, title="BatchNorm", loc="center right", fontsize=8)
    data = ", ".join(sorted({r["data"] for r in rows}))
    fig.suptitle(f"cifar_cnn, {data}: every run (dotted: chance + 5)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_csv(rows: list[dict], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)


def padding_report(root: Path, out_dir: Path) -> str:
    rows = collect(root)
    if not rows:
        raise SystemExit(f"error: no completed run under {root}")
    table = cells(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out_dir / "runs.csv")
    write_csv(table, out_dir / "cells.csv")
    wake_figure(rows, out_dir / "wake.png")
    curves_figure(rows, out_dir / "curves.png")
    return markdown(table)

"""Early markers of runs that never learn (docs/findings.md, "How often zero-init fails").

    python src/failure_study.py outputs/sweeps/failrate_cifar_fnn_arms [-o markers.csv]

For every completed run with diagnostics under the paths: its outcome (zeroinit.outcomes:
learned by its last step?, steps to learn) and what the Diagnostics callback measured on the
probe batch: each hidden layer's fraction of negative pre-activations at the last measured
step <= --marker-step (default 20: the hypothesis under test says a failing U[0, 1) run has
pushed nearly all of them negative by then) and at the end; the first layer's dead units,
distinct units and effective rank at the end (for a zero-weight init W - W0 = W); each layer's
wake-up step. Prints one line per configuration and outcome (medians), writes one row per run.
"""

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

from zeroinit.report import group_runs
from zeroinit.results import load, read_results


def first_layer_markers(results: dict, marker_step: int) -> dict:
    """What the diagnostics saw: for each layer followed by an activation (1, 2, ...: input to
    output), its negative pre-activations at the last measured step <= marker_step (and that
    step) and at the end; the first layer's dead units, distinct units and effective rank at
    the end; every layer's wake-up step."""
    diagnostics = results.get("diagnostics") or {}
    history = (diagnostics.get("symmetry") or {}).get("history") or {}
    layers = diagnostics.get("layers") or []
    if not layers or not history.get("step"):
        return {}
    steps = history["step"]
    early = [i for i, s in enumerate(steps) if s <= marker_step]
    at = early[-1] if early else 0
    nan = [math.nan] * len(steps)
    out = {"marker_step": steps[at]}
    for i, layer in enumerate(layers, start=1):
        metrics = history["layers"].get(layer["name"], {})
        neg = metrics.get("neg_preact_frac") or nan
        if all(v is None for v in neg):
            continue  # the output layer: no activation after it
        out[f"neg_preact_{i}@marker"] = _value(neg[at])
        out[f"neg_preact_{i}@end"] = _value(neg[-1])
    first = history["layers"].get(layers[0]["name"], {})
    out["dead_first@end"] = _value((first.get("dead_units_frac") or nan)[-1])
    out["distinct_first@end"] = _value((first.get("distinct_units") or nan)[-1])
    out["erank_first@end"] = _value((first.get("effective_rank") or nan)[-1])
    out["wakeup_steps"] = " ".join(str(v) for v in diagnostics.get("wakeup_step", {}).values())
    return out


def _value(v) -> float:
    return math.nan if v is None else float(v)


def rows(paths, marker_step: int) -> list[dict]:
    out = []
    for fig, groups in group_runs(load(*paths)).items():
        for g in groups:
            for r in g.outcomes().to_dict("records"):
                if r["status"] != "completed":
                    continue
                markers = first_layer_markers(read_results(r["run"]), marker_step)
                if not markers:
                    continue
                out.append(
                    {
                        "figure": fig,
                        "configuration": g.label,
                        "seed": r["seed"],
                        "learned": bool(r["learned"]),
                        "steps_to_learn": r["learn_step"],
                        "last_step": r["last_step"],
                        "final_test_acc_%": 100 * r["final_acc"],
                        **markers,
                        "run": r["run"],
                    }
                )
    return out


def summary(found: list[dict]) -> list[str]:
    """One line per configuration and outcome: n and the markers' medians."""
    lines = []
    keys = sorted({(r["figure"], r["configuration"], r["learned"]) for r in found})
    for fig, label, learned in keys:
        these = [
            r
            for r in found
            if (r["figure"], r["configuration"], r["learned"]) == (fig, label, learned)
        ]
        med = {
            k: float(np.nanmedian([r.get(k, math.nan) for r in these]))
            for k in these[0]
            if k.startswith(("neg_preact_", "dead_", "distinct_", "erank_"))
        }
        steps = sorted({r["marker_step"] for r in these})
        negs = [k for k in med if k.startswith("neg_preact_") and k.endswith("@marker")]
        lines.append(
            f"{fig} | {label} | {'learned' if learned else 'never learned'} | n={len(these)} | "
            f"negative pre-activations at step {'/'.join(map(str, steps))}, median per layer: "
            + " ".join(f"{med[k]:.2f}" for k in negs)
            + f" | first layer at the end: dead {med['dead_first@end']:.2f}, distinct units "
            f"{med['distinct_first@end']:.0f}, effective rank {med['erank_first@end']:.1f}"
        )
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="sweep or run folders (searched recursively)")
    parser.add_argument("-o", "--out", help="CSV of one row per run (default: print only)")
    parser.add_argument("--marker-step", type=int, default=20)
    args = parser.parse_args(argv)
    found = rows(args.paths, args.marker_step)
    if not found:
        print(
            f"error: no completed run with diagnostics under {', '.join(args.paths)}",
            file=sys.stderr,
        )
        return 2
    print("\n".join(summary(found)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(found[0]))
            w.writeheader()
            w.writerows(found)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Early markers of runs that never learn (docs/findings.md, "How often zero-init fails").

    python src/failure_study.py outputs/sweeps/failrate_cifar_fnn_arms [-o markers.csv]

For every completed run with diagnostics under the paths: its outcome (zeroinit.outcomes:
learned by its last step?, steps to learn) and what the Diagnostics callback measured of its
first layer on the probe batch: the fraction of negative pre-activations at the last measured
step <= --marker-step (default 20: the hypothesis says a failing U[0, 1) run has pushed nearly
all of them negative by then), dead units, effective rank at the end (for a zero-weight init
W - W0 = W), and each layer's wake-up step. Prints one line per configuration and outcome
(medians), writes one row per run.
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
    """What the diagnostics saw of the first layer: negative pre-activations at the last
    measured step <= marker_step (and that step), at the end; dead units and effective rank at
    the end; the wake-up step of every layer."""
    diagnostics = results.get("diagnostics") or {}
    history = (diagnostics.get("symmetry") or {}).get("history") or {}
    layers = diagnostics.get("layers") or []
    if not layers or not history.get("step"):
        return {}
    first = layers[0]["name"]
    metrics = history["layers"].get(first, {})
    steps = history["step"]
    early = [i for i, s in enumerate(steps) if s <= marker_step]
    at = early[-1] if early else 0
    neg = metrics.get("neg_preact_frac") or [math.nan] * len(steps)
    dead = metrics.get("dead_units_frac") or [math.nan] * len(steps)
    erank = metrics.get("effective_rank") or [math.nan] * len(steps)
    return {
        "marker_step": steps[at],
        "neg_preact_first@marker": _value(neg[at]),
        "neg_preact_first@end": _value(neg[-1]),
        "dead_first@end": _value(dead[-1]),
        "erank_first@end": _value(erank[-1]),
        "wakeup_steps": " ".join(str(v) for v in diagnostics.get("wakeup_step", {}).values()),
    }


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
            k: float(np.nanmedian([r[k] for r in these]))
            for k in ("neg_preact_first@marker", "dead_first@end", "erank_first@end")
        }
        steps = sorted({r["marker_step"] for r in these})
        lines.append(
            f"{fig} | {label} | {'learned' if learned else 'never learned'} | n={len(these)} | "
            f"negative first-layer pre-activations at step {'/'.join(map(str, steps))}: "
            f"median {med['neg_preact_first@marker']:.3f} | dead first-layer units at the "
            f"end {med['dead_first@end']:.3f} | effective rank {med['erank_first@end']:.1f}"
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

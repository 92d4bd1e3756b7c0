"""Which figure, and which line of it, a run belongs to: the report's grouping, also the
`figure`, `line` and `configuration` columns of zeroinit.results.load.

A figure is one sweep (`sweep_name`) on one dataset. Its lines group runs by everything in
their config but the seed and the settings that do not change the experiment (paths, device,
logging: zeroinit.keys); a line's label names what differs between the figure's lines.
Configs here are flat ({"init.name": ..., "seed": ...}: zeroinit.config.flatten).
"""

import json

from zeroinit.init import bias_is_scaled
from zeroinit.keys import ignored_by_report

# Friendly names for the keys that usually tell the lines of a figure apart.
SHORT = {"model.name": "model", "init.name": "init", "init.bias_scale": "x"}


def figure_key(config: dict) -> str:
    return f"{config.get('sweep_name', 'runs')}-{config.get('dataset.name', '?')}"


def line_key(config: dict) -> str:
    """Runs with equal keys are seeds of one line (one configuration)."""
    return json.dumps(
        {k: v for k, v in config.items() if not ignored_by_report(k)}, sort_keys=True, default=str
    )


def line_labels(lines: dict[str, dict]) -> dict[str, str]:
    """{line key: config} of one figure -> {line key: label}, labelled by the config keys that
    differ between the figure's lines: model, init and scale first, then any other key that
    these do not already determine (init.weight follows from init.name). A key a line leaves
    unset (None) is left out of its label: labels stay distinct, as the set of keys differs."""
    configs = {
        key: {k: v for k, v in c.items() if not ignored_by_report(k)} for key, c in lines.items()
    }
    keys = sorted({k for c in configs.values() for k in c})
    varying = [
        k
        for k in keys
        if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1
        and not k.endswith("._target_")
    ]
    varying.sort(key=lambda k: (list(SHORT).index(k) if k in SHORT else len(SHORT), k))
    shown = []
    for k in varying:
        seen = {}
        for c in configs.values():
            ident = json.dumps([c.get(s) for s in shown], default=str)
            seen.setdefault(ident, set()).add(json.dumps(c.get(k), default=str))
        if any(len(v) > 1 for v in seen.values()):
            shown.append(k)
    # a nested setting's varying keys go together: normalize's std beside its mean
    nested = {k.rsplit(".", 1)[0] for k in shown if k.count(".") >= 2}
    shown += [k for k in varying if k not in shown and k.rsplit(".", 1)[0] in nested]
    shown.sort(key=varying.index)
    labels = {}
    for key, c in lines.items():
        parts = [
            str(c.get(k))
            if k in ("model.name", "init.name")
            else f"{SHORT.get(k, k)}{'' if k in SHORT else '='}{c.get(k)}"
            for k in shown
            if (k != "init.bias_scale" or bias_is_scaled(c.get("init.bias")))
            and c.get(k) is not None  # a key the line leaves unset: "x=None" says nothing
        ]
        labels[key] = " ".join(parts) or f"{c.get('model.name')} {c.get('init.name')}"
    return labels

"""Symmetry metrics (zeroinit.layer_metrics) of every layer at step 0 and at up to
`symmetry_points` steps spread over the run. A part of the Diagnostics callback
(zeroinit.diagnostics), which owns the record, the layers and the loggers these methods use.

Spread log-spaced over the run rather than at fixed steps 1, 2, 4, ... or every epoch end:
one measurement of mnist_fnn costs about as much as ten of its training steps on a CPU
(float64 eigenvalues, see layer_metrics.py), so a short run pays for few and a long one still
sees its beginning. (The first steps are covered densely by the gradient statistics.)
"""

import math

import torch

from zeroinit.diagnostics.base import net_of
from zeroinit.layer_metrics import (
    METRICS,
    probe_metrics,
    round_json,
    single_threaded,
    weight_metrics,
)


def measurement_steps(total_steps: float, points: int, min_gap: int = 1) -> list[int]:
    """Up to `points` steps from 1 to `total_steps`, log-spaced, at most one per `min_gap`
    steps of the run on average (so a short run gets fewer), rounded (fewer when they
    collide). An unknown total (a run bounded by time, not steps) gives 1, 2, 4, ..., 2**20."""
    if points <= 0:
        return []
    if not math.isfinite(total_steps) or total_steps < 1:
        return [2**i for i in range(21)]
    total = int(total_steps)
    points = max(1, min(points, total // max(min_gap, 1)))
    if points == 1:
        return [total]
    return sorted({round(total ** (i / (points - 1))) for i in range(points)})


class SymmetryMetrics:
    """Per layer: effective and numerical rank, distinct units, and on a probe batch of test
    images the negative pre-activations and dead units (zeroinit.layer_metrics.METRICS)."""

    def _start_symmetry(self, trainer, pl_module):
        self._schedule = set(
            measurement_steps(
                trainer.estimated_stepping_batches, self.symmetry_points, self.symmetry_min_gap
            )
        )
        self._probe = self._probe_batch(trainer)
        if trainer.global_step == 0 and not self.record["symmetry"]["history"]["step"]:
            self._measure(trainer, pl_module, step=0)

    def _probe_batch(self, trainer):
        """The first `probe_size` test images, normalized as the model sees them (they come
        through the datamodule's own evaluation batches)."""
        dm = trainer.datamodule
        if dm is None or self.probe_size <= 0:
            return None
        xs, n = [], 0
        for x, _ in dm.val_dataloader():
            xs.append(x)
            n += len(x)
            if n >= self.probe_size:
                break
        return torch.cat(xs)[: self.probe_size] if xs else None

    def _measure(self, trainer, pl_module, step, epoch=None):
        skipped = self.record["symmetry"]["skipped"]
        metrics = {name: {k: None for k in METRICS} for name, _ in self.layers}
        with single_threaded(pl_module.device):
            for name, m in self.layers:
                if name not in skipped:
                    metrics[name].update(weight_metrics(m.weight, self.cos_tol, self.rank_tol))
        if self._probe is not None:
            names = {m: name for name, m in self.layers}
            for name, values in probe_metrics(
                net_of(pl_module), names, self._probe, self.dead_tol
            ).items():
                metrics[name].update(values)
        history = self.record["symmetry"]["history"]
        history["step"].append(step)
        history["epoch"].append(epoch)
        scalars = {}
        for name, values in metrics.items():
            for key, value in values.items():
                history["layers"][name][key].append(round_json(value))
                if value is not None:
                    scalars[f"weight_symmetry/{key}/{self.labels[name]}"] = value
        self._log(trainer, scalars, step)
        self.record["symmetry"]["final"] = {  # the latest measurement
            name: {k: values[k][-1] for k in METRICS} for name, values in history["layers"].items()
        }

    def _final_table(self) -> str:
        final = self.record["symmetry"]["final"]
        head = "| layer | shape | wake-up | " + " | ".join(METRICS) + " |"
        rows = [head, "|" + "---|" * (len(METRICS) + 3)]
        for layer in self.record["layers"]:
            name = layer["name"]
            cells = [
                name,
                "x".join(map(str, layer["shape"])),
                str(self.record["wakeup_step"].get(name)),
            ]
            cells += ["-" if final[name][k] is None else f"{final[name][k]:.4g}" for k in METRICS]
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)

"""Gradient flow: the first steps' weight gradients (the paper's Figure 12) and each layer's
wake-up step. A part of the Diagnostics callback (zeroinit.diagnostics), which owns the
record, the layers and the loggers these methods use."""

import torch

from zeroinit.diagnostics.base import timed_hook
from zeroinit.layer_metrics import gradient_stats, round_json, widened


class GradientFlow:
    """The first `steps` optimizer steps: histogram, norm and non-zero fraction of each
    layer's weight gradient, its bias-gradient norm and ||W - W_init||; and the wake-up step:
    the first step whose weight gradient has a non-zero entry, watched every step until every
    layer woke or `wakeup_max_steps` passed."""

    def _start_gradients(self, trainer):
        if self.steps > 0 and trainer.global_step == 0:
            self._init_weights = {name: m.weight.detach().clone() for name, m in self.layers}

    def wants_gradients(self, step: int) -> bool:
        """Whether the step about to be taken (counted from 1) is measured: the stacked
        launcher hands a member's gradients to its callbacks only then."""
        return self.enabled and (self._watching or step <= self.steps)

    @timed_hook
    def _gradients(self, trainer, step):
        if self._watching:
            self._watch(trainer, step)
        if step <= self.steps and step not in self.record["first_steps"]["step"]:
            self._gradient_stats(trainer, step)

    def _watch(self, trainer, step):
        """Which layers have a non-zero weight gradient at this step, kept on the device (no
        host sync: on a GPU one per step and member would stall the queue of kernels); the
        host reads them at steps 1, 2, 4, ..., 32, then every 32nd, and when the run's
        results are written (_read_wakeups)."""
        grads = [m.weight.grad for _, m in self.layers]
        if all(g is not None for g in grads) and len({g.dtype for g in grads}) == 1:
            # max |g| of every layer in one fused call (a deep net: a few kernels, not two per
            # layer); != 0 exactly where an entry is: no underflow, as a sum of squares would
            # have for the rounding-sized gradients this measures; NaN counts as non-zero
            nonzero = torch.stack(torch._foreach_norm(grads, ord=float("inf"))).ne(0)
        else:
            nonzero = torch.stack(
                [
                    g.ne(0).any()
                    if g is not None
                    else torch.zeros((), dtype=torch.bool, device=m.weight.device)
                    for g, (_, m) in zip(grads, self.layers)
                ]
            )
        if self._first_nonzero is None:  # 0: not yet; a resumed run starts from its record
            wake = self.record["wakeup_step"]
            known = [wake[name] or 0 for name, _ in self.layers]
            self._first_nonzero = torch.tensor(known, device=nonzero.device)
        self._first_nonzero = torch.where(
            (self._first_nonzero == 0) & nonzero,
            torch.full_like(self._first_nonzero, step),
            self._first_nonzero,
        )
        self._unread = step
        if step >= self.wakeup_max_steps or step % 32 == 0 or step in (1, 2, 4, 8, 16):
            self._read_wakeups()
            self._log_wakeups(trainer)

    def _read_wakeups(self):
        """What _watch kept on the device, into the record (one host sync): each layer's
        wake-up step, and the steps watched, which end at the step the last layer woke (or
        at wakeup_max_steps) as if read every step. The run's ResultsWriter calls it before
        every write of results.json; the loggers get it from _log_wakeups."""
        step = self._unread
        if step is None or self.record is None:
            return
        self._unread = None
        wake = self.record["wakeup_step"]
        for (name, _), first in zip(self.layers, self._first_nonzero.tolist()):
            if first and wake[name] is None:
                wake[name] = first
                self._unlogged.append((first, f"wakeup_step/{self.labels[name]}"))
        everyone = all(v is not None for v in wake.values())
        self.record["wakeup_watched_steps"] = max(wake.values()) if everyone else step
        if everyone or step >= self.wakeup_max_steps:
            self._watching = False
            self._table_due = True

    def _log_wakeups(self, trainer):
        """Woken layers to every logger at their wake-up step; once watching ends, the
        table of them to TensorBoard."""
        for first, tag in sorted(self._unlogged):
            self._log(trainer, {tag: first}, first)
        self._unlogged = []
        tb = self._tb(trainer)
        if self._table_due and tb:
            wake, watched = self.record["wakeup_step"], self.record["wakeup_watched_steps"]
            rows = [
                f"| {name} | {wake[name] or f'not by step {watched}'} |" for name, _ in self.layers
            ]
            tb.add_text(
                "diagnostics/wakeup_step",
                "| layer | wake-up step |\n|---|---|\n" + "\n".join(rows),
                watched,
            )
        self._table_due = False

    def _gradient_stats(self, trainer, step):
        tb = self._tb(trainer)
        self.record["first_steps"]["step"].append(step)
        stats = gradient_stats([m for _, m in self.layers], self.bins)
        scalars = {}
        for (name, _), s in zip(self.layers, stats):
            label = self.labels[name]
            scalars[f"weight_gradients/norm/{label}"] = s["norm"]
            scalars[f"weight_gradients/nonzero_frac/{label}"] = s["nonzero_frac"]
            entry = self.record["first_steps"]["layers"][name]
            entry["grad_norm"].append(round_json(s["norm"]))
            entry["grad_nonzero_frac"].append(round_json(s["nonzero_frac"]))
            entry["bias_grad_norm"].append(round_json(s["bias_norm"]))
            entry["hist_edges"].append([round_json(e) for e in s["edges"]])
            entry["hist_counts"].append(s["counts"])
            if tb:
                tb.add_histogram_raw(
                    f"weight_gradients/{label}",
                    min=s["min"],
                    max=s["max"],
                    num=s["numel"],
                    sum=s["sum"],
                    sum_squares=s["sum_squares"],
                    bucket_limits=s["edges"][1:],
                    bucket_counts=s["counts"],
                    global_step=step,
                )
        self._log(trainer, scalars, step)

    def _weight_change(self, trainer, step):
        self._changes_done = step
        changes = [
            widened(m.weight.detach() - self._init_weights[name]).norm() for name, m in self.layers
        ]
        changes = torch.stack([c.double() for c in changes]).tolist()  # one host sync
        for (name, _), change in zip(self.layers, changes):
            entry = self.record["first_steps"]["layers"][name]["weight_change"]
            entry.append(round_json(change))
        self._log(
            trainer,
            {
                f"weight_change/{self.labels[name]}": change
                for (name, _), change in zip(self.layers, changes)
            },
            step,
        )
        if step >= self.steps:
            self._init_weights = {}  # no longer needed: free the copy

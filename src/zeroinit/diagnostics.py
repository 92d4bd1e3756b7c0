"""Look inside training: gradient flow (the paper's Figure 12), layer wake-up order, symmetry.

`Diagnostics` is a Lightning callback, on by default (conf/callbacks/default.yaml); switch it
off with `callbacks.diagnostics=null` or `callbacks.diagnostics.enabled=false`. For every
Linear/Conv layer (module names as init_report.py prints them, input to output) it records

- the first `steps` optimizer steps (default 5, as Figure 12): histogram, norm and fraction of
  non-zero entries of the weight gradient, the bias-gradient norm, and ||W - W_init|| after
  the step;
- the wake-up step: the first optimizer step whose weight gradient has a non-zero entry,
  checked every step until every layer woke or `wakeup_max_steps` passed (null: never woke);
- the symmetry metrics of layer_metrics.py at step 0 (init) and at up to `symmetry_points`
  steps spread log-spaced over the run's total steps, the last one its final step, at most one
  per `symmetry_min_gap` steps on average (the default run, 320 steps: 1, 18, 320; a paper
  run of 4,690 steps: 12 points from 1 to 4,690), plus the state where a run stops early.
  Spread over the run rather than at fixed steps 1, 2, 4, ... or every epoch end: one
  measurement of mnist_fnn costs about as much as ten of its training steps on a CPU (float64
  eigenvalues, see layer_metrics.py), so a short run pays for few and a long one still sees
  its beginning. (The first steps are covered densely by the gradient statistics above.)
  The probe pass runs in eval mode (BatchNorm uses its running
  statistics, nothing is updated) with hooks attached only for that pass: training is
  bit-identical with or without this callback.

What it writes: results.json "diagnostics" (its schema is in results.py, the results
contract) through the run's ResultsWriter, and TensorBoard. TensorBoard tags name a layer
by its position, module name, type and shape (`01_1_Linear_500x784`, `53_layers.15.conv3_
Conv2d_2048x512x1x1`), and say `by_step` since their x axis is optimizer steps, not epochs:
histograms `weight_gradients/<layer>`, scalars `weight_gradients/<metric>/<layer>`,
`weight_symmetry/<metric>/<layer>`, `wakeup_step/<layer>`, text `diagnostics/*`.

A new metric: one function in layer_metrics.py, called from `_measure` or `_gradient_stats`.
"""

import math
import time

import lightning as L
import torch
from torch import nn

from zeroinit.init import INIT_LAYERS
from zeroinit.layer_metrics import (
    METRICS,
    gradient_stats,
    probe_metrics,
    round_json,
    single_threaded,
    weight_metrics,
    widened,
)
from zeroinit.loggers import log_scalars, tensorboard
from zeroinit.results import ResultsWriter


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


def layer_label(position: int, name: str, module: nn.Module) -> str:
    """A layer's TensorBoard name: position (so tags sort input to output), module name, type
    and weight shape. Only letters, digits, '_', '.', '-' and '/' survive in a tag."""
    shape = "x".join(map(str, module.weight.shape))
    return f"{position:02d}_{name}_{type(module).__name__}_{shape}"


def _net(pl_module) -> nn.Module:
    """The model itself: the Classifier's `net`, unwrapped from torch.compile, so layer names
    match init_report.py and the probe pass runs eagerly (hooks, no recompilation)."""
    net = getattr(pl_module, "net", pl_module)
    return getattr(net, "_orig_mod", net)


def _hook(fn):
    """A Diagnostics hook: runs only where the callback is active, adds its time to
    record["time_s"], and if it returns True rewrites results.json (through the run's
    ResultsWriter) with that time included."""

    def wrapper(self, trainer, *args, **kwargs):
        if not self._active(trainer) or self.record is None:
            return
        start = time.perf_counter()
        try:
            flush = fn(self, trainer, *args, **kwargs)
        finally:
            self.record["time_s"] += time.perf_counter() - start
        if flush and self._writer is not None:
            self._writer.write()

    return wrapper


class Diagnostics(L.Callback):
    """Gradient flow, wake-up steps and symmetry metrics of every Linear/Conv layer; see the
    module docstring for what is measured when and where it is written.

    enabled           False: the callback does nothing (same as callbacks.diagnostics=null)
    steps             first optimizer steps with gradient histograms, norms, weight change
    wakeup_max_steps  last step checked for a layer's first non-zero weight gradient
    symmetry          False: no symmetry metrics (and no probe batch)
    symmetry_points   symmetry measurements after step 0 (at most), log-spaced over the run
    symmetry_min_gap  at most one measurement per this many steps of the run, on average
    probe_size        test images in the probe batch
    histogram_bins    bins of the gradient histograms
    max_numel         weights with more entries get no rank/distinct-unit metrics (recorded)
    cos_tol, rank_tol, dead_tol   the thresholds of distinct_units, numerical_rank, dead units
    """

    def __init__(
        self,
        enabled: bool = True,
        steps: int = 5,
        wakeup_max_steps: int = 1000,
        symmetry: bool = True,
        symmetry_points: int = 12,
        symmetry_min_gap: int = 100,
        probe_size: int = 256,
        histogram_bins: int = 51,
        max_numel: int | None = None,
        cos_tol: float = 0.999,
        rank_tol: float = 0.01,
        dead_tol: float = 1e-3,
    ):
        self.enabled, self.steps, self.wakeup_max_steps = enabled, steps, wakeup_max_steps
        self.symmetry, self.symmetry_points = symmetry, symmetry_points
        self.symmetry_min_gap = symmetry_min_gap
        self.probe_size, self.bins = probe_size, histogram_bins
        self.max_numel, self.cos_tol, self.rank_tol = max_numel, cos_tol, rank_tol
        self.dead_tol = dead_tol
        self.record = None
        self.layers = []  # (name, module), input to output
        self.labels = {}  # name -> TensorBoard label
        self._init_weights = {}
        self._probe = None
        self._writer = None
        self._watching = True
        self._first_nonzero = None  # per layer, on the device: first step with a gradient
        self._unread = None  # the last watched step not read into the record yet
        self._unlogged = []  # (wake-up step, tag) read but not logged yet
        self._table_due = False  # watching ended: the wake-up table goes to TensorBoard
        self._changes_done = 0  # last step whose weight change was recorded
        self._schedule = set()  # the steps whose symmetry is measured

    # -- state: a resumed run keeps what was measured before
    def state_dict(self):
        self._read_wakeups()  # a checkpoint holds what was seen up to its step
        return {"record": self.record, "watching": self._watching} if self.record else {}

    def load_state_dict(self, state):
        if state:
            self.record, self._watching = state["record"], state["watching"]

    # -- helpers
    def _active(self, trainer):
        return self.enabled and trainer.is_global_zero

    def _tb(self, trainer):
        """TensorBoard's writer, for what only it shows (histograms, text tables)."""
        return tensorboard(trainer.loggers)

    def _log(self, trainer, metrics: dict, step: int) -> None:
        """Scalars go to every logger."""
        log_scalars(trainer.loggers, metrics, step)

    # -- hooks
    def on_fit_start(self, trainer, pl_module):
        if not self._active(trainer):
            return
        self.layers = [
            (name, m) for name, m in _net(pl_module).named_modules() if isinstance(m, INIT_LAYERS)
        ]
        self.labels = {name: layer_label(i + 1, name, m) for i, (name, m) in enumerate(self.layers)}
        self._writer = ResultsWriter.of(trainer)
        if self.record is None:
            self.record = self._new_record()
        if self._writer is not None:  # every write of results.json carries it from now on
            self._writer.add_section("diagnostics", self.record, refresh=self._read_wakeups)

    def _new_record(self):
        names = [name for name, _ in self.layers]
        layers = [
            {
                "name": name,
                "type": type(m).__name__,
                "shape": list(m.weight.shape),
                "units": m.weight.shape[0],
                "fan_in": m.weight[0].numel(),
            }
            for name, m in self.layers
        ]
        skipped = {}
        if self.symmetry and self.max_numel is not None:
            skipped = {
                name: f"weight has {m.weight.numel():,} entries > max_numel="
                f"{self.max_numel:,}: no rank or distinct-unit metrics"
                for name, m in self.layers
                if m.weight.numel() > self.max_numel
            }
        return {
            "settings": {
                "steps": self.steps,
                "wakeup_max_steps": self.wakeup_max_steps,
                "symmetry": self.symmetry,
                "symmetry_points": self.symmetry_points,
                "symmetry_min_gap": self.symmetry_min_gap,
                "probe_size": self.probe_size,
                "histogram_bins": self.bins,
                "max_numel": self.max_numel,
                "cos_tol": self.cos_tol,
                "rank_tol": self.rank_tol,
                "dead_tol": self.dead_tol,
            },
            "layers": layers,
            "wakeup_step": {name: None for name in names},
            "wakeup_watched_steps": 0,
            "first_steps": {
                "step": [],
                "layers": {
                    name: {
                        k: []
                        for k in (
                            "grad_norm",
                            "grad_nonzero_frac",
                            "bias_grad_norm",
                            "weight_change",
                            "hist_edges",
                            "hist_counts",
                        )
                    }
                    for name in names
                },
            },
            "symmetry": {
                "final": None,
                "history": {
                    "step": [],
                    "epoch": [],
                    "layers": {name: {k: [] for k in METRICS} for name in names},
                },
                "skipped": skipped,
            },
            "time_s": 0.0,
        }

    @_hook
    def on_train_start(self, trainer, pl_module):
        if self.steps > 0 and trainer.global_step == 0:
            self._init_weights = {name: m.weight.detach().clone() for name, m in self.layers}
        if self.symmetry:
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

    def wants_gradients(self, step: int) -> bool:
        """Whether the step about to be taken (counted from 1) is measured: the stacked
        launcher hands a member's gradients to its callbacks only then."""
        return self.enabled and (self._watching or step <= self.steps)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step + 1  # the step about to be taken, counted from 1
        if self.wants_gradients(step):  # tested before the hook's bookkeeping, as below
            self._gradients(trainer, step)

    @_hook
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

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Most steps measure nothing: tested here, before the hook's bookkeeping (a stack
        # calls this K times a step)
        step = trainer.global_step  # optimizer steps taken so far
        early, scheduled = self._changes_done < step <= self.steps, step in self._schedule
        if early or scheduled:
            self._batch_end(trainer, pl_module, step, early, scheduled)

    @_hook
    def _batch_end(self, trainer, pl_module, step, early, scheduled):
        if early and self._init_weights:
            self._weight_change(trainer, step)
        if scheduled and self.symmetry:
            history = self.record["symmetry"]["history"]["step"]
            if not history or history[-1] != step:
                # an epoch's last step is marked with the epoch: the results.json written at
                # that epoch's end holds it
                epoch = trainer.current_epoch + 1 if trainer.is_last_batch else None
                self._measure(trainer, pl_module, step, epoch)

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

    @_hook
    def on_fit_end(self, trainer, pl_module):
        # A run stopped before its last scheduled step (max_steps, a divergence, a stop
        # signal) still gets its final state.
        history = self.record["symmetry"]["history"]
        if self.symmetry and (not history["step"] or history["step"][-1] != trainer.global_step):
            self._measure(trainer, pl_module, trainer.global_step)
        tb = self._tb(trainer)
        if tb and self.record["symmetry"]["final"]:
            tb.add_text("diagnostics/symmetry_final", self._final_table(), trainer.global_step)
        self._read_wakeups()
        self._log_wakeups(trainer)
        return True

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
                _net(pl_module), names, self._probe, self.dead_tol
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

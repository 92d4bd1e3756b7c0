"""Look inside training: gradient flow (the paper's Figure 12), layer wake-up order, symmetry.

`Diagnostics` is a Lightning callback, on by default (conf/callbacks/default.yaml); switch it
off with `callbacks.diagnostics=null` or `callbacks.diagnostics.enabled=false`. For every
Linear/Conv layer (module names as init_report.py prints them, input to output) it records

- the first `steps` optimizer steps (default 5, as Figure 12) and each layer's wake-up step
  (gradients.py: GradientFlow);
- the symmetry metrics of layer_metrics.py at step 0 (init) and at up to `symmetry_points`
  steps spread log-spaced over the run's total steps, the last one its final step, at most one
  per `symmetry_min_gap` steps on average (the default run, 320 steps: 1, 18, 320; a paper
  run of 4,690 steps: 12 points from 1 to 4,690), plus the state where a run stops early
  (symmetry.py: SymmetryMetrics). The probe pass runs in eval mode (BatchNorm uses its
  running statistics, nothing is updated) with hooks attached only for that pass: training
  is bit-identical with or without this callback.

What it writes: results.json "diagnostics" (its schema: record.py) through the run's
ResultsWriter, and TensorBoard. TensorBoard tags name a layer by its position, module name,
type and shape (`01_1_Linear_500x784`, `53_layers.15.conv3_Conv2d_2048x512x1x1`), and say
`by_step` since their x axis is optimizer steps, not epochs: histograms
`weight_gradients/<layer>`, scalars `weight_gradients/<metric>/<layer>`,
`weight_symmetry/<metric>/<layer>`, `wakeup_step/<layer>`, text `diagnostics/*`.

A new metric: one function in layer_metrics.py, called from SymmetryMetrics._measure or
GradientFlow._gradient_stats.
"""

import lightning as L
from torch import nn

from zeroinit.diagnostics.base import net_of, timed_hook
from zeroinit.diagnostics.gradients import GradientFlow
from zeroinit.diagnostics.record import SECTION, new_record
from zeroinit.diagnostics.symmetry import SymmetryMetrics, measurement_steps
from zeroinit.init import INIT_LAYERS
from zeroinit.loggers import log_scalars, tensorboard
from zeroinit.results import ResultsWriter

__all__ = ["Diagnostics", "layer_label", "measurement_steps"]


def layer_label(position: int, name: str, module: nn.Module) -> str:
    """A layer's TensorBoard name: position (so tags sort input to output), module name, type
    and weight shape. Only letters, digits, '_', '.', '-' and '/' survive in a tag."""
    shape = "x".join(map(str, module.weight.shape))
    return f"{position:02d}_{name}_{type(module).__name__}_{shape}"


class Diagnostics(GradientFlow, SymmetryMetrics, L.Callback):
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

    def _settings(self) -> dict:
        return {
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
        }

    # -- hooks
    def on_fit_start(self, trainer, pl_module):
        if not self._active(trainer):
            return
        self.layers = [
            (name, m) for name, m in net_of(pl_module).named_modules() if isinstance(m, INIT_LAYERS)
        ]
        self.labels = {name: layer_label(i + 1, name, m) for i, (name, m) in enumerate(self.layers)}
        self._writer = ResultsWriter.of(trainer)
        if self.record is None:
            skipped = {}
            if self.symmetry and self.max_numel is not None:
                skipped = {
                    name: f"weight has {m.weight.numel():,} entries > max_numel="
                    f"{self.max_numel:,}: no rank or distinct-unit metrics"
                    for name, m in self.layers
                    if m.weight.numel() > self.max_numel
                }
            self.record = new_record(self._settings(), self.layers, skipped)
        if self._writer is not None:  # every write of results.json carries it from now on
            self._writer.add_section(SECTION, self.record, refresh=self._read_wakeups)

    @timed_hook
    def on_train_start(self, trainer, pl_module):
        self._start_gradients(trainer)
        if self.symmetry:
            self._start_symmetry(trainer, pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step + 1  # the step about to be taken, counted from 1
        if self.wants_gradients(step):  # tested before the hook's bookkeeping, as below
            self._gradients(trainer, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # Most steps measure nothing: tested here, before the hook's bookkeeping (a stack
        # calls this K times a step)
        step = trainer.global_step  # optimizer steps taken so far
        early, scheduled = self._changes_done < step <= self.steps, step in self._schedule
        if early or scheduled:
            self._batch_end(trainer, pl_module, step, early, scheduled)

    @timed_hook
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

    @timed_hook
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

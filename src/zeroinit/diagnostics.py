"""Look inside training: gradient flow (the paper's Figure 12), layer wake-up order, symmetry.

`Diagnostics` is a Lightning callback, on by default (conf/callbacks/default.yaml); switch it
off with `callbacks.diagnostics=null` or `callbacks.diagnostics.enabled=false`. For every
Linear/Conv layer (module names as init_report.py prints them, input to output) it records

- the first `steps` optimizer steps (default 5, as Figure 12): histogram, norm and fraction of
  non-zero entries of the weight gradient, the bias-gradient norm, and ||W - W_init|| after
  the step;
- the wake-up step: the first optimizer step whose weight gradient has a non-zero entry,
  checked every step until every layer woke or `wakeup_max_steps` passed (null: never woke);
- symmetry, at step 0 (init), at steps 1, 2, 4, 8, ... and at the end of every epoch, for W
  seen as a matrix out x fan_in (a conv kernel reshaped to out x in*k*k):
    effective_rank   exp(entropy of p), p = s / sum(s), s the singular values (Roy & Vetterli)
    numerical_rank   how many s exceed rank_tol (1%) of the largest
                     (both 0 for an all-zero W)
    distinct_units   rows grouped greedily in order: a row opens a class and takes every
                     later unassigned row with |cos| > cos_tol (0.999). Rows whose norm is at
                     most 1e-6 of the largest row norm (exact zeros included) have no direction;
                     together they form one class, since such units are identical.
    neg_preact_frac  fraction of entries < 0 at the input of the first activation that runs
                     after the layer, on a fixed probe batch (the first `probe_size` test images)
    dead_units_frac  fraction of units (features; channels for a conv) whose activation
                     derivative is below dead_tol (1e-3) in absolute value for every probe
                     image and position
  The last two are null for a layer after which another Linear/Conv runs before any activation
  (the output layer; in ResNet a bottleneck's conv3 when a conv shortcut follows it, whose
  BatchNorm'd sum then feeds the activation). The probe pass runs in eval mode (BatchNorm uses
  its running statistics, nothing is updated), with forward hooks attached only for that
  pass: training steps are never hooked, and training is bit-identical with or without this.

Costs: per measurement one float64 Gram matrix (min(out, fan_in)^2 x max) and its eigenvalues
per layer, plus one probe forward pass. `max_numel` skips the symmetry metrics of bigger
weights; every skipped layer is listed in results.json with the reason. `time_s` in the record
is the time the callback itself took.

Where results go: TensorBoard (histograms "gradients/<layer>", scalars "gradients/<metric>/
<layer>", "wakeup_step/<layer>", "symmetry/<metric>/<layer>", text "diagnostics") and
results.json under "diagnostics", written through the run's ResultsWriter:

  settings       the options above
  layers         [{name, type, shape, units, fan_in}], input to output
  wakeup_step    {layer: step or null};  wakeup_watched_steps: how many steps were checked
  first_steps    {step: [1..steps], layers: {layer: {grad_norm, grad_nonzero_frac,
                  bias_grad_norm, weight_change: [per step], hist_edges: [[bins+1 edges] per
                  step], hist_counts: [[bins counts] per step]}}}. Bins span [min, max] of
                  the gradient; a constant gradient (all zero: a sleeping layer) is one
                  zero-width bin [v, v] holding every entry.
  symmetry       {final: {layer: {metric: value}}, history: {step: [...], epoch: [epoch
                  number, or null between epoch ends], layers: {layer: {metric: [...]}}},
                  skipped: {layer: reason}}
  time_s         seconds spent in this callback

`summary_columns(results)` turns that into a few scalars per run for a report table;
`plot_gradient_flow(results_by_init, path)` draws Figure 12 (src/report.py calls it).
"""
import contextlib
import math
import time

import lightning as L
import numpy as np
import torch
from torch import nn

from zeroinit.init import INIT_LAYERS
from zeroinit.models.activation import ACTIVATIONS
from zeroinit.results import ResultsWriter

METRICS = ("effective_rank", "numerical_rank", "distinct_units", "neg_preact_frac",
           "dead_units_frac")
ACTIVATION_TYPES = tuple(ACTIVATIONS.values())


def _round(x, digits=6):
    """Compact JSON: 6 significant digits; non-finite values become null."""
    if x is None or not math.isfinite(x):
        return None
    if isinstance(x, int):
        return x
    return float(f"{x:.{digits}g}")


# ---------------------------------------------------------------- symmetry metrics (pure)

@contextlib.contextmanager
def single_threaded(device: torch.device):
    """One CPU thread for the small eigenproblems: they gain nothing from a second thread,
    and on a busy machine multi-threaded LAPACK calls were seen to stall for seconds."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def weight_metrics(weight: torch.Tensor, cos_tol: float = 0.999,
                   rank_tol: float = 0.01) -> dict:
    """effective_rank, numerical_rank, distinct_units of a Linear/Conv weight (see the module
    docstring). All None if the weight holds a NaN or inf."""
    w = weight.detach().flatten(1).double()
    out, fan_in = w.shape
    # Singular values from the smaller Gram matrix, in float64: its rounding noise is ~1e-8 of
    # the largest singular value, small enough not to inflate the effective rank of the
    # (nearly) rank-1 matrices zero init produces. A float32 Gram adds ~3e-4 per value: a
    # rank-1 500x784 matrix would get effective rank 1.17 instead of 1.00.
    gram = w @ w.T if out <= fan_in else w.T @ w
    if not torch.isfinite(gram.diagonal()).all():  # a NaN/inf weight reaches the diagonal
        return {"effective_rank": None, "numerical_rank": None, "distinct_units": None}
    if gram.diagonal().max() <= 0:  # all-zero weight (a sleeping zero-init layer)
        return {"effective_rank": 0.0, "numerical_rank": 0, "distinct_units": 1}
    s = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    if s.max() > 0:
        p = s / s.sum()
        p = p[p > 0]
        effective_rank = float(torch.exp(-(p * p.log()).sum()))
        numerical_rank = int((s > rank_tol * s.max()).sum())
    else:
        effective_rank, numerical_rank = 0.0, 0
    return {"effective_rank": effective_rank, "numerical_rank": numerical_rank,
            "distinct_units": distinct_units(w, cos_tol, gram if out <= fan_in else None)}


def distinct_units(w: torch.Tensor, cos_tol: float = 0.999, gram=None) -> int:
    """Rows of `w` (out x fan_in) that differ in direction: greedy grouping by |cos| > cos_tol;
    all (near-)zero rows are one class. `gram` = w @ w.T when the caller has it."""
    norms = gram.diagonal().clamp_min(0).sqrt() if gram is not None else w.norm(dim=1)
    top = norms.max()
    if top <= 0:
        return 1
    alive = norms > 1e-6 * top
    n_alive = int(alive.sum())
    zero_class = int(n_alive < len(norms))
    if gram is None:
        unit = w[alive] / norms[alive, None]
        same = (unit @ unit.T).abs() > cos_tol
    else:
        g, n = (gram, norms) if not zero_class else (gram[alive][:, alive], norms[alive])
        same = g.abs() > cos_tol * torch.outer(n, n)
    # A row that matches only itself is a class of its own (with pytorch init: every row).
    shared = same.sum(dim=1) > 1
    classes = n_alive - int(shared.sum())
    if classes < n_alive:
        same = same[shared][:, shared].cpu().numpy()
        unassigned = np.ones(len(same), dtype=bool)
        for i in range(len(same)):
            if unassigned[i]:
                classes += 1
                unassigned &= ~same[i]
    return classes + zero_class


@torch.no_grad()
def probe_metrics(net: nn.Module, names: dict, x: torch.Tensor,
                  dead_tol: float = 1e-3) -> dict:
    """{layer name: {neg_preact_frac, dead_units_frac}} on the probe batch `x`, for each layer
    in `names` (module -> name) that is followed by an activation. One eval-mode forward pass;
    hooks live only for its duration and the modules' train/eval modes are restored."""
    last = {"layer": None}
    found = {}

    def after_layer(module, args, output):
        last["layer"] = names[module]

    def before_activation(module, args):
        name, last["layer"] = last["layer"], None  # only the first activation after a layer
        if name is None or name in found:
            return
        z = args[0].detach()
        with torch.enable_grad():  # derivative of an elementwise activation, any kind
            zz = z.float().requires_grad_(True)
            (d,) = torch.autograd.grad(module.forward(zz).sum(), zz)
        alive = (d.abs() >= dead_tol).transpose(0, 1).reshape(z.shape[1], -1).any(dim=1)
        found[name] = torch.stack([(z < 0).float().mean(), (~alive).float().mean()])

    modes = {m: m.training for m in net.modules()}
    handles = [m.register_forward_hook(after_layer) for m in names]
    handles += [m.register_forward_pre_hook(before_activation) for m in net.modules()
                if isinstance(m, ACTIVATION_TYPES)]
    try:
        net.eval()
        net(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    if not found:
        return {}
    values = torch.stack(list(found.values())).tolist()  # one host sync
    return {name: {"neg_preact_frac": v[0], "dead_units_frac": v[1]}
            for name, v in zip(found, values)}


# ---------------------------------------------------------------- the callback

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
    probe_size        test images in the probe batch
    histogram_bins    bins of the gradient histograms
    max_numel         weights with more entries get no rank/distinct-unit metrics (recorded)
    cos_tol, rank_tol, dead_tol   the thresholds of distinct_units, numerical_rank, dead units
    """

    def __init__(self, enabled: bool = True, steps: int = 5, wakeup_max_steps: int = 1000,
                 symmetry: bool = True, probe_size: int = 256, histogram_bins: int = 51,
                 max_numel: int | None = None, cos_tol: float = 0.999, rank_tol: float = 0.01,
                 dead_tol: float = 1e-3):
        self.enabled, self.steps, self.wakeup_max_steps = enabled, steps, wakeup_max_steps
        self.symmetry, self.probe_size, self.bins = symmetry, probe_size, histogram_bins
        self.max_numel, self.cos_tol, self.rank_tol = max_numel, cos_tol, rank_tol
        self.dead_tol = dead_tol
        self.record = None
        self.layers = []  # (name, module), input to output
        self._init_weights = {}
        self._probe = None
        self._writer = None
        self._watching = True
        self._changes_done = 0  # last step whose weight change was recorded

    # -- state: a resumed run keeps what was measured before
    def state_dict(self):
        return {"record": self.record, "watching": self._watching} if self.record else {}

    def load_state_dict(self, state):
        if state:
            self.record, self._watching = state["record"], state["watching"]

    # -- helpers
    def _active(self, trainer):
        return self.enabled and trainer.is_global_zero

    def _tb(self, trainer):
        experiment = getattr(trainer.logger, "experiment", None) if trainer.logger else None
        return experiment if hasattr(experiment, "add_histogram_raw") else None

    # -- hooks
    def on_fit_start(self, trainer, pl_module):
        if not self._active(trainer):
            return
        self.layers = [(name, m) for name, m in _net(pl_module).named_modules()
                       if isinstance(m, INIT_LAYERS)]
        self._writer = ResultsWriter.of(trainer)
        if self.record is None:
            self.record = self._new_record()
        if self._writer is not None:  # every write of results.json carries it from now on
            self._writer.add_section("diagnostics", self.record)

    def _new_record(self):
        names = [name for name, _ in self.layers]
        layers = [{"name": name, "type": type(m).__name__, "shape": list(m.weight.shape),
                   "units": m.weight.shape[0], "fan_in": m.weight[0].numel()}
                  for name, m in self.layers]
        skipped = {}
        if self.symmetry and self.max_numel is not None:
            skipped = {name: f"weight has {m.weight.numel():,} entries > max_numel="
                             f"{self.max_numel:,}: no rank or distinct-unit metrics"
                       for name, m in self.layers if m.weight.numel() > self.max_numel}
        return {
            "settings": {"steps": self.steps, "wakeup_max_steps": self.wakeup_max_steps,
                         "symmetry": self.symmetry, "probe_size": self.probe_size,
                         "histogram_bins": self.bins, "max_numel": self.max_numel,
                         "cos_tol": self.cos_tol, "rank_tol": self.rank_tol,
                         "dead_tol": self.dead_tol},
            "layers": layers,
            "wakeup_step": {name: None for name in names},
            "wakeup_watched_steps": 0,
            "first_steps": {"step": [], "layers": {name: {k: [] for k in (
                "grad_norm", "grad_nonzero_frac", "bias_grad_norm", "weight_change",
                "hist_edges", "hist_counts")} for name in names}},
            "symmetry": {"final": None,
                         "history": {"step": [], "epoch": [],
                                     "layers": {name: {k: [] for k in METRICS}
                                                for name in names}},
                         "skipped": skipped},
            "time_s": 0.0,
        }

    @_hook
    def on_train_start(self, trainer, pl_module):
        if self.steps > 0 and trainer.global_step == 0:
            self._init_weights = {name: m.weight.detach().clone() for name, m in self.layers}
        if self.symmetry:
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

    @_hook
    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        step = trainer.global_step + 1  # the step about to be taken, counted from 1
        if not self.wants_gradients(step):
            return
        grads = [m.weight.grad for _, m in self.layers]
        if self._watching:
            self._watch(trainer, step, grads)
        if step <= self.steps and step not in self.record["first_steps"]["step"]:
            self._gradient_stats(trainer, step, grads)

    def _watch(self, trainer, step, grads):
        wake = self.record["wakeup_step"]
        nonzero = torch.stack([g.ne(0).any() if g is not None
                               else torch.zeros((), dtype=torch.bool, device=m.weight.device)
                               for g, (_, m) in zip(grads, self.layers)]).tolist()
        tb = self._tb(trainer)
        for (name, _), nz in zip(self.layers, nonzero):
            if nz and wake[name] is None:
                wake[name] = step
                if tb:
                    tb.add_scalar(f"wakeup_step/{name}", step, step)
        self.record["wakeup_watched_steps"] = step
        if all(v is not None for v in wake.values()) or step >= self.wakeup_max_steps:
            self._watching = False
            if tb:
                rows = [f"| {name} | {wake[name] or f'not by step {step}'} |"
                        for name, _ in self.layers]
                tb.add_text("diagnostics/wakeup_step",
                            "| layer | wake-up step |\n|---|---|\n" + "\n".join(rows), step)

    def _gradient_stats(self, trainer, step, grads):
        stats, flat = [], []
        for (name, m), g in zip(self.layers, grads):
            g = (g if g is not None else torch.zeros_like(m.weight)).detach().float().flatten()
            b = m.bias.grad if m.bias is not None else None
            flat.append(g)
            stats.append(torch.stack([g.min(), g.max(), g.norm(), g.ne(0).float().mean(),
                                      b.detach().float().norm() if b is not None
                                      else torch.tensor(float("nan"), device=g.device),
                                      g.sum(), g.square().sum()]))
        stats = torch.stack(stats).tolist()  # one host sync for every layer
        counts = [torch.histc(g, self.bins, lo, hi) if hi > lo else None
                  for g, (lo, hi, *_) in zip(flat, stats)]
        dense = [c for c in counts if c is not None]
        dense = iter(torch.stack(dense).tolist() if dense else [])
        tb = self._tb(trainer)
        self.record["first_steps"]["step"].append(step)
        for (name, _), g, (lo, hi, norm, nz, bnorm, total, squares), c in zip(
                self.layers, flat, stats, counts):
            if c is None:  # constant gradient (all zero: the layer sleeps): one bin [v, v]
                edges, c = [lo, hi], [float(g.numel())]
            else:
                edges, c = np.linspace(lo, hi, self.bins + 1).tolist(), next(dense)
            entry = self.record["first_steps"]["layers"][name]
            entry["grad_norm"].append(_round(norm))
            entry["grad_nonzero_frac"].append(_round(nz))
            entry["bias_grad_norm"].append(_round(bnorm))
            entry["hist_edges"].append([_round(e) for e in edges])
            entry["hist_counts"].append([int(v) for v in c])
            if tb:
                tb.add_histogram_raw(f"gradients/{name}", min=lo, max=hi, num=g.numel(),
                                     sum=total, sum_squares=squares, bucket_limits=edges[1:],
                                     bucket_counts=c, global_step=step)
                tb.add_scalar(f"gradients/norm/{name}", norm, step)
                tb.add_scalar(f"gradients/nonzero_frac/{name}", nz, step)

    @_hook
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step  # optimizer steps taken so far
        if self._init_weights and self._changes_done < step <= self.steps:
            self._weight_change(trainer, step)
        if self.symmetry and step > 0 and step & (step - 1) == 0:  # 1, 2, 4, 8, ...
            history = self.record["symmetry"]["history"]["step"]
            if not history or history[-1] != step:
                self._measure(trainer, pl_module, step)

    def _weight_change(self, trainer, step):
        self._changes_done = step
        changes = torch.stack([(m.weight.detach() - self._init_weights[name]).float().norm()
                               for name, m in self.layers]).tolist()
        tb = self._tb(trainer)
        for (name, _), change in zip(self.layers, changes):
            entry = self.record["first_steps"]["layers"][name]["weight_change"]
            entry.append(_round(change))
            if tb:
                tb.add_scalar(f"gradients/weight_change/{name}", change, step)
        if step >= self.steps:
            self._init_weights = {}  # no longer needed: free the copy

    @_hook
    def on_validation_end(self, trainer, pl_module):
        # The epoch-end measurement, done here when the test split is evaluated at the end of
        # the epoch (the default): this comes before on_train_epoch_end, where the
        # ResultsWriter writes results.json (whatever the callback order), so one write holds
        # the epoch's metrics and its symmetry.
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.is_last_batch:
            self._epoch_end(trainer, pl_module, trainer.current_epoch + 1)

    @_hook
    def on_train_epoch_end(self, trainer, pl_module):
        # An epoch without validation at its end: measure now and write results.json again.
        epoch = trainer.current_epoch + 1
        if self.symmetry and epoch not in self.record["symmetry"]["history"]["epoch"]:
            self._epoch_end(trainer, pl_module, epoch)
            return True

    @_hook
    def on_fit_end(self, trainer, pl_module):
        # A run stopped mid-epoch (max_steps, a divergence) still gets its final state.
        history = self.record["symmetry"]["history"]
        if self.symmetry and (not history["step"] or history["step"][-1] != trainer.global_step):
            self._measure(trainer, pl_module, trainer.global_step)
            self._set_final()
        tb = self._tb(trainer)
        if tb and self.record["symmetry"]["final"]:
            tb.add_text("diagnostics/symmetry_final", self._final_table(), trainer.global_step)
        return True

    def _epoch_end(self, trainer, pl_module, epoch):
        if not self.symmetry:
            return
        history = self.record["symmetry"]["history"]
        if history["step"] and history["step"][-1] == trainer.global_step:
            history["epoch"][-1] = epoch  # measured at this very step already (a power of 2)
        else:
            self._measure(trainer, pl_module, trainer.global_step, epoch)
        self._set_final()

    def _set_final(self):
        history = self.record["symmetry"]["history"]
        self.record["symmetry"]["final"] = {
            name: {k: values[k][-1] for k in METRICS}
            for name, values in history["layers"].items()}

    def _measure(self, trainer, pl_module, step, epoch=None):
        skipped = self.record["symmetry"]["skipped"]
        metrics = {name: {k: None for k in METRICS} for name, _ in self.layers}
        with single_threaded(pl_module.device):
            for name, m in self.layers:
                if name not in skipped:
                    metrics[name].update(weight_metrics(m.weight, self.cos_tol, self.rank_tol))
        if self._probe is not None:
            names = {m: name for name, m in self.layers}
            for name, values in probe_metrics(_net(pl_module), names, self._probe,
                                              self.dead_tol).items():
                metrics[name].update(values)
        history = self.record["symmetry"]["history"]
        history["step"].append(step)
        history["epoch"].append(epoch)
        tb = self._tb(trainer)
        for name, values in metrics.items():
            for key, value in values.items():
                history["layers"][name][key].append(_round(value))
                if tb and value is not None:
                    tb.add_scalar(f"symmetry/{key}/{name}", value, step)

    def _final_table(self) -> str:
        final = self.record["symmetry"]["final"]
        head = "| layer | shape | wake-up | " + " | ".join(METRICS) + " |"
        rows = [head, "|" + "---|" * (len(METRICS) + 3)]
        for layer in self.record["layers"]:
            name = layer["name"]
            cells = [name, "x".join(map(str, layer["shape"])),
                     str(self.record["wakeup_step"].get(name))]
            cells += ["-" if final[name][k] is None else f"{final[name][k]:.4g}" for k in METRICS]
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)


# ---------------------------------------------------------------- reading results

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
    out = dict.fromkeys(("wakeup_all", "erank_mean", "erank_first", "nrank_frac_min",
                         "distinct_frac_min", "dead_frac_mean"), nan)
    diag = (results or {}).get("diagnostics")
    if not diag:
        return out
    wake = list((diag.get("wakeup_step") or {}).values())
    if wake and all(v is not None for v in wake):
        out["wakeup_all"] = float(max(wake))
    final = (diag.get("symmetry") or {}).get("final") or {}
    layers = [layer for layer in diag.get("layers", []) if layer["name"] in final]

    def per_layer(key, scale=lambda layer: 1):
        return [final[lay["name"]][key] / scale(lay) for lay in layers
                if final[lay["name"]].get(key) is not None]

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

    runs = {init: r["diagnostics"] for init, r in results_by_init.items()
            if (r.get("diagnostics") or {}).get("first_steps", {}).get("step")}
    if not runs:
        raise ValueError("no run has diagnostics.first_steps (was the diagnostics callback on?)")
    n_rows = max(len(d["layers"]) for d in runs.values())
    fig, axes = plt.subplots(n_rows, len(runs), figsize=(4.2 * len(runs), 1.9 * n_rows + 0.6),
                             squeeze=False)
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
            ranges = [_central_range(e, c) for e, c in zip(entry["hist_edges"][: len(steps)],
                                                           entry["hist_counts"])]
            lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
            span = (hi - lo) or 1.0
            ax.set_xlim(lo - 0.05 * span, hi + 0.05 * span)
            for i, (step, edges, counts) in enumerate(zip(steps, entry["hist_edges"],
                                                          entry["hist_counts"])):
                base = i
                if edges[0] == edges[-1]:  # constant gradient: a spike
                    ax.plot([edges[0]] * 2, [base, base + 0.85], color=colors[i], lw=2)
                    if edges[0] == 0:
                        ax.text(lo + 0.02 * span, base + 0.3, f"step {step}: all zero",
                                fontsize=7, color=colors[i])
                    continue
                heights = np.asarray(counts, float)
                heights = 0.85 * heights / heights.max() if heights.max() > 0 else heights
                ax.fill_between(np.repeat(edges, 2)[1:-1], base, base + np.repeat(heights, 2),
                                color=colors[i], alpha=0.6, lw=0)
            ax.set_yticks(range(len(steps)), [str(s) for s in steps], fontsize=7)
            ax.set_ylim(-0.1, len(steps))
            ax.tick_params(axis="x", labelsize=7)
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 2))
            ax.xaxis.get_offset_text().set_fontsize(7)
            shape = "x".join(map(str, layer["shape"]))
            wake = diag.get("wakeup_step", {}).get(layer["name"])
            ax.set_title(f"{init}: layer {layer['name']} ({layer['type']} {shape}), "
                         f"wakes at step {wake}", fontsize=8)
            if col == 0:
                ax.set_ylabel("step", fontsize=8)
    fig.suptitle("Weight-gradient distribution per layer over the first steps (input at top)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

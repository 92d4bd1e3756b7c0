"""What the diagnostics measure, as pure functions of one layer: no Lightning, no state.

Symmetry of a Linear/Conv weight W seen as a matrix out x fan_in (a conv kernel reshaped to
out x in*k*k), by `weight_metrics`:
    effective_rank   exp(entropy of p), p = s / sum(s), s the singular values (Roy & Vetterli)
    numerical_rank   how many s exceed rank_tol (1%) of the largest
                     (both 0 for an all-zero W)
    distinct_units   rows grouped greedily in order: a row opens a class and takes every
                     later unassigned row with |cos| > cos_tol (0.999). Rows whose norm is at
                     most 1e-6 of the largest row norm (exact zeros included) have no direction;
                     together they form one class, since such units are identical.
On a fixed probe batch, by `probe_metrics`:
    neg_preact_frac  fraction of entries < 0 at the input of the first activation that runs
                     after the layer
    dead_units_frac  fraction of units (features; channels for a conv) whose activation
                     derivative is below dead_tol (1e-3) in absolute value for every probe
                     image and position
  Both are absent for a layer after which another Linear/Conv runs before any activation (the
  output layer; in ResNet a bottleneck's conv3 when a conv shortcut follows it, whose
  BatchNorm'd sum then feeds the activation).
Of a weight gradient, by `gradient_stats`: norm, non-zero fraction, bias-gradient norm and a
histogram (Figure 12).

A new metric is one function here, called from the callback in diagnostics/.
"""

import contextlib
import math

import numpy as np
import torch
from torch import nn

from zeroinit.models.activation import ACTIVATIONS

METRICS = (
    "effective_rank",
    "numerical_rank",
    "distinct_units",
    "neg_preact_frac",
    "dead_units_frac",
)
ACTIVATION_TYPES = tuple(ACTIVATIONS.values())


def round_json(x, digits=6):
    """Compact JSON: 6 significant digits; non-finite values become null."""
    if x is None or not math.isfinite(x):
        return None
    if isinstance(x, int):
        return x
    return float(f"{x:.{digits}g}")


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
def weight_metrics(weight: torch.Tensor, cos_tol: float = 0.999, rank_tol: float = 0.01) -> dict:
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
    return {
        "effective_rank": effective_rank,
        "numerical_rank": numerical_rank,
        "distinct_units": distinct_units(w, cos_tol, gram if out <= fan_in else None),
    }


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
def probe_metrics(net: nn.Module, names: dict, x: torch.Tensor, dead_tol: float = 1e-3) -> dict:
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
    handles += [
        m.register_forward_pre_hook(before_activation)
        for m in net.modules()
        if isinstance(m, ACTIVATION_TYPES)
    ]
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
    return {
        name: {"neg_preact_frac": v[0], "dead_units_frac": v[1]} for name, v in zip(found, values)
    }


def widened(t: torch.Tensor) -> torch.Tensor:
    """`t` in float32, or float64 if it is: float64 runs keep gradients far below float32's
    smallest number (~1e-38), and those are what a float64 study looks at."""
    return t if t.dtype == torch.float64 else t.float()


@torch.no_grad()
def gradient_stats(layers, bins: int) -> list[dict]:
    """Per (weight, bias) pair of `layers` (Linear/Conv modules after backward): the weight
    gradient's norm, non-zero fraction, min/max/sum/sum of squares and a `bins`-bin histogram
    over [min, max], and the bias gradient's norm. A missing gradient counts as all zero; a
    constant gradient (all zero: a sleeping layer) is one zero-width bin [v, v] holding every
    entry. One host sync for every layer."""
    stats, flat = [], []
    for m in layers:
        g = m.weight.grad
        g = widened((g if g is not None else torch.zeros_like(m.weight)).detach()).flatten()
        b = m.bias.grad if m.bias is not None else None
        flat.append(g)
        stats.append(
            torch.stack(
                [
                    g.min(),
                    g.max(),
                    g.norm(),
                    g.ne(0).to(g.dtype).mean(),
                    widened(b.detach()).norm().to(g.dtype)
                    if b is not None
                    else torch.tensor(float("nan"), dtype=g.dtype, device=g.device),
                    g.sum(),
                    g.square().sum(),
                ]
            )
        )
    stats = torch.stack(stats).tolist()
    counts = [
        torch.histc(g, bins, lo, hi) if hi > lo else None for g, (lo, hi, *_) in zip(flat, stats)
    ]
    dense = [c for c in counts if c is not None]
    dense = iter(torch.stack(dense).tolist() if dense else [])
    out = []
    for g, (lo, hi, norm, nonzero, bias_norm, total, squares), c in zip(flat, stats, counts):
        if c is None:
            edges, c = [lo, hi], [float(g.numel())]
        else:
            edges, c = np.linspace(lo, hi, bins + 1).tolist(), next(dense)
        out.append(
            {
                "min": lo,
                "max": hi,
                "norm": norm,
                "nonzero_frac": nonzero,
                "bias_norm": bias_norm,
                "sum": total,
                "sum_squares": squares,
                "numel": g.numel(),
                "edges": edges,
                "counts": [int(v) for v in c],
            }
        )
    return out

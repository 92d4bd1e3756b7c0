"""Where a zero-weight conv's first gradient comes from: the border or the interior.

When every channel of a conv's input is one constant c (the case behind zero-weight layers,
docs/findings.md), its weight gradient splits exactly into

  interior  c_i x sum over batch and positions of the output gradient, for every kernel tap:
            what the gradient would be if every patch were the constant c (in exact arithmetic
            0 behind a training-mode BatchNorm, whose input gradient sums to 0 per channel)
  border    the rest: the gradient of (padded input - c), which is non-zero only where a patch
            reaches into the padding. Zero padding puts 0 there instead of c; circular
            padding puts c there, so its border term is exactly 0.

`BorderSplit` (off by default: callbacks.border_split in conf/callbacks/default.yaml) records,
for the first `steps` training steps and every Conv2d whose input is constant then, the norms
of both terms, into results.json "border_split":

  steps     the steps watched
  layers    {conv: {constant_steps, first_constant_step, last_constant_step,
                    border_first_nonzero, interior_first_nonzero, border_max, interior_max}}
            (a first_nonzero is the first watched step whose term had any non-zero entry;
            null: never while the input was constant)

It reads the run's own forward pass (hooks), so a run that records it trains alone, not in a
stack (zeroinit.stacked.launch.group_key).
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from zeroinit.diagnostics.base import net_of
from zeroinit.results import ResultsWriter

SECTION = "border_split"


class BorderSplit(L.Callback):
    def __init__(self, steps: int = 1000):
        self.steps = steps
        self.record = None
        self._step = 0
        self._handles = []

    def state_dict(self):
        return {"record": self.record} if self.record else {}

    def load_state_dict(self, state):
        self.record = state.get("record")

    def on_fit_start(self, trainer, pl_module):
        if not trainer.is_global_zero:
            return
        convs = [(n, m) for n, m in net_of(pl_module).named_modules() if isinstance(m, nn.Conv2d)]
        if self.record is None:
            self.record = {
                "steps": self.steps,
                "layers": {
                    name: {
                        "constant_steps": 0,
                        "first_constant_step": None,
                        "last_constant_step": None,
                        "border_first_nonzero": None,
                        "interior_first_nonzero": None,
                        "border_max": 0.0,
                        "interior_max": 0.0,
                    }
                    for name, _ in convs
                },
            }
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in convs]
        writer = ResultsWriter.of(trainer)
        if writer is not None:
            writer.add_section(SECTION, self.record)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step + 1  # the step this batch takes, counted from 1

    def on_fit_end(self, trainer, pl_module):
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name):
        def hook(module, inputs, output):
            if not module.training or not torch.is_grad_enabled() or self._step > self.steps:
                return
            x = inputs[0]
            dims = (0, 2, 3)
            if not bool((x.amax(dims) == x.amin(dims)).all()):
                return
            step = self._step
            c = x[0, :, 0, 0].detach()
            output.register_hook(lambda gy: self._split(name, module, x.detach(), c, gy, step))

        return hook

    def _split(self, name, conv, x, c, gy, step):
        border, interior = split_terms(conv, x, c, gy)
        entry = self.record["layers"][name]
        entry["constant_steps"] += 1
        if entry["first_constant_step"] is None:
            entry["first_constant_step"] = step
        entry["last_constant_step"] = step
        for term, value in (("border", border), ("interior", interior)):
            norm = float(value.norm())
            if norm > 0 and entry[f"{term}_first_nonzero"] is None:
                entry[f"{term}_first_nonzero"] = step
            entry[f"{term}_max"] = max(entry[f"{term}_max"], norm)


def split_terms(conv: nn.Conv2d, x, c, gy) -> tuple[torch.Tensor, torch.Tensor]:
    """(border, interior) weight-gradient terms of `conv` for an input `x` constant `c` per
    channel and output gradient `gy`; their sum is the conv's weight gradient."""
    gy = gy.detach()
    kh, kw = conv.kernel_size
    total = gy.sum((0, 2, 3))  # (out,)
    groups = conv.groups
    c_in = c.view(groups, -1)  # each group's input channels
    out_per = total.view(groups, -1)
    interior = torch.einsum("go,gi->goi", out_per, c_in).reshape(conv.weight.shape[:2])
    interior = interior[:, :, None, None].expand(-1, -1, kh, kw)
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x, conv._reversed_padding_repeated_twice, mode=mode) - c.view(1, -1, 1, 1)
    border = torch.nn.grad.conv2d_weight(
        padded, conv.weight.shape, gy, conv.stride, 0, conv.dilation, groups
    )
    return border, interior

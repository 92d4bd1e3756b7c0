"""Controls that separate rounding from padding in BatchNorm nets (docs/findings.md), all off
by default (conf/perturb/none.yaml):

  exact_bn   a training-mode BatchNorm whose input is constant in a channel (max == min over
             the batch and every position, compared exactly) outputs exactly its beta there,
             as it would in exact arithmetic; floating point instead leaves a rounding-sized
             offset (x - mean(x) is not exactly 0). Only the forward value is snapped: the
             backward is BatchNorm's own (out - out.detach() + beta adds exactly 0 to the
             gradient path), so nothing else changes.
  bn_offset  +-bn_offset added to every BatchNorm's beta at init, a random sign per channel
             (drawn from the run's seed): the rounding offset at a size we choose.
  bn_noise   independent N(0, bn_noise^2) noise on every element of every BatchNorm output in
             training mode. Unlike rounding, this makes the positions of a channel differ by
             itself, so it is a separate arm, not a model of rounding.

Eval mode (the test pass) is left alone: there BatchNorm uses its running statistics.

    scheme = zeroinit.perturb.of(cfg)   # conf/perturb built; zeroinit.run.build_net does this
    scheme.apply(net)       # offsets + hooks on a run's net
    scheme.attach(stacked)  # hooks only, on a stack of such nets (zeroinit.stacked)
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from zeroinit.errors import check
from zeroinit.stacked.layers import StackedBatchNorm

BATCHNORMS = (nn.modules.batchnorm._BatchNorm, StackedBatchNorm)


@dataclass
class Perturbation:
    exact_bn: bool = False
    bn_offset: float = 0.0
    bn_noise: float = 0.0

    def __post_init__(self):
        check(
            isinstance(self.exact_bn, bool),
            f"perturb.exact_bn: {self.exact_bn!r} is not allowed; allowed: true or false",
        )
        for key in ("bn_offset", "bn_noise"):
            value = getattr(self, key)
            check(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0,
                f"perturb.{key}: {value!r} is not allowed; allowed: a finite number >= 0",
            )

    @property
    def active(self) -> bool:
        return self.exact_bn or self.bn_offset > 0 or self.bn_noise > 0

    def apply(self, net: nn.Module) -> nn.Module:
        """Offsets and hooks on a run's freshly initialized net, in place; returns it."""
        if not self.active:
            return net
        norms = self.check_model(net)
        if self.bn_offset > 0:
            # its own generator from the run's seed: the draw of every other thing is unchanged
            generator = torch.Generator().manual_seed(torch.initial_seed())
            with torch.no_grad():
                for m in norms:
                    check(m.bias is not None, "perturb.bn_offset: a BatchNorm without beta")
                    sign = torch.randint(0, 2, m.bias.shape, generator=generator) * 2 - 1
                    m.bias.add_(self.bn_offset * sign.to(m.bias.dtype))
        return self.attach(net)

    def check_model(self, net: nn.Module) -> list[nn.Module]:
        """The net's BatchNorms; a UserError if a perturbation is on and there are none."""
        norms = batchnorms(net)
        check(
            not self.active or bool(norms),
            f"perturb: {self.describe()} needs BatchNorm layers and this model has none "
            "(model.batchnorm=false, or a model without them)",
        )
        return norms

    def attach(self, net: nn.Module) -> nn.Module:
        """The forward hooks alone: a stack's net carries its members' offsets already."""
        for m in batchnorms(net):
            if self.exact_bn:
                m.register_forward_hook(_exact)
            if self.bn_noise > 0:
                m.register_forward_hook(_noise(self.bn_noise))
        return net

    def describe(self) -> str:
        on = [
            "exact_bn=true" if self.exact_bn else "",
            f"bn_offset={self.bn_offset:g}" if self.bn_offset > 0 else "",
            f"bn_noise={self.bn_noise:g}" if self.bn_noise > 0 else "",
        ]
        return " ".join(o for o in on if o)


def of(cfg) -> Perturbation:
    """conf/perturb of a run's config, built (all off where a config has none)."""
    from zeroinit.config import build

    return build(cfg.perturb) if cfg.get("perturb") else Perturbation()


def batchnorms(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, BATCHNORMS)]


def channel_layout(module: nn.Module, x: torch.Tensor) -> tuple[list[int], list[int]]:
    """The dims a BatchNorm's statistics reduce over, and the shape its (C,) or a stack's
    (K, C) parameters take to broadcast against x: (B, C, ...) or a stack's (K, B, C, ...)."""
    if getattr(module, "k", None) is None:
        rest = [1] * (x.dim() - 2)
        return [0, *range(2, x.dim())], [1, x.shape[1], *rest]
    rest = [1] * (x.dim() - 3)
    return [1, *range(3, x.dim())], [x.shape[0], 1, x.shape[2], *rest]


def constant_channels(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """True where a channel's input is one value over the batch and every position."""
    dims, _ = channel_layout(module, x)
    return x.amax(dims, keepdim=True) == x.amin(dims, keepdim=True)


def _exact(module, inputs, output):
    if not module.training:
        return None
    x = inputs[0]
    constant = constant_channels(module, x)
    if not bool(constant.any()):
        return None
    _, shape = channel_layout(module, x)
    beta = module.bias if module.bias is not None else torch.zeros(shape, device=x.device)
    target = beta.detach().reshape(shape).to(output.dtype)
    # forward: exactly beta (a - a is exactly 0); backward: BatchNorm's own through `output`
    return torch.where(constant, output - output.detach() + target, output)


def _noise(sigma: float):
    def hook(module, inputs, output):
        if module.training:
            return output + sigma * torch.randn_like(output)
        return None

    return hook

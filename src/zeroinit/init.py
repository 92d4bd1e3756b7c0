"""The init schemes: one `InitScheme`, built from conf/init by Hydra, serves every model.

A scheme is data, not code: a weight rule, a bias rule, a bias scale and a scope. The rules
are the dictionaries below (the one place that lists them; conf/init/*.yaml only pick names):

  weight: pytorch (keep PyTorch's default draw) | zero | lecun_uniform
  bias:   pytorch | zero | normal (N(0, 1)) | uniform (U[0, 1)); and two controls of the
          failure-rate study (docs/findings.md): uniform_symmetric (U[-1, 1): signs mixed as
          N(0, 1)'s, support bounded as U[0, 1)'s), half_normal (|N(0, 1)|: all positive as
          U[0, 1)'s, tails as N(0, 1)'s)
  bias_scale multiplies only the random bias rules (SCALED_BIAS_RULES), as in the paper's
  Figures 4 and 6.
  scope:  all     every Linear and Conv at any depth (output layer, bottlenecks, shortcuts);
                  normalization layers get weight 1, bias 0. This project's experiment.
          authors only the first and the last Linear/Conv (ResNet-50: the stem conv and the
                  classifier), everything else left as the model was built (PyTorch defaults).
                  What the authors' ResNet-50 code did: its init loop never entered the
                  bottleneck blocks (docs/findings.md), so the paper's Figure 11 is this scope.

    scheme = hydra.utils.instantiate(cfg.init)    # zeroinit.run.build_net does this
    scheme.apply(net)                             # in place; returns net
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from zeroinit.errors import UserError, check

# Layers whose weights the paper's schemes set. _ConvNd covers Conv1d/2d/3d and transposed.
INIT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def fan_in(weight: torch.Tensor) -> int:
    # Linear: in_features; Conv: C_in * k_h * k_w (the paper's "C_in * k_w + k_h" is a typo).
    return weight[0].numel()


def _zero(layer, tensor, generator):
    tensor.zero_()


def _lecun_uniform(layer, tensor, generator):
    bound = math.sqrt(3.0 / fan_in(layer.weight))
    tensor.uniform_(-bound, bound, generator=generator)


def _normal(layer, tensor, generator):
    tensor.normal_(0.0, 1.0, generator=generator)


def _uniform(layer, tensor, generator):
    tensor.uniform_(0.0, 1.0, generator=generator)


def _uniform_symmetric(layer, tensor, generator):
    tensor.uniform_(-1.0, 1.0, generator=generator)


def _half_normal(layer, tensor, generator):
    tensor.normal_(0.0, 1.0, generator=generator).abs_()


# None = keep what PyTorch's reset_parameters drew (kaiming_uniform with a=sqrt(5)).
WEIGHT_RULES = {"pytorch": None, "zero": _zero, "lecun_uniform": _lecun_uniform}
BIAS_RULES = {
    "pytorch": None,
    "zero": _zero,
    "normal": _normal,
    "uniform": _uniform,
    "uniform_symmetric": _uniform_symmetric,
    "half_normal": _half_normal,
}
SCALED_BIAS_RULES = ("normal", "uniform", "uniform_symmetric", "half_normal")
SCOPES = ("all", "authors")
_SCALE_HELP = "allowed: a finite number >= 0, or bias_scale=down|none|up"


def bias_is_scaled(bias: str) -> bool:
    """Whether init.bias_scale changes anything for this bias rule (the report asks this of a
    results.json config, where only the rule's name is at hand)."""
    return bias in SCALED_BIAS_RULES


def init_layers(net: nn.Module, scope: str = "all") -> list[nn.Module]:
    """The Linear/Conv layers a scheme of this scope sets, in module order."""
    layers = [m for m in net.modules() if isinstance(m, INIT_LAYERS)]
    if scope == "authors":
        return list(dict.fromkeys([layers[0], layers[-1]])) if layers else []
    return layers


@dataclass
class InitScheme:
    """conf/init/<name>.yaml as an object. Checked when built: a bad value is a one-line
    UserError naming its key and the allowed values."""

    weight: str = "pytorch"
    bias: str = "pytorch"
    bias_scale: float = 1.0
    scope: str = "all"
    name: str = ""  # the scheme's label in run names and reports

    def __post_init__(self):
        check(
            self.weight in WEIGHT_RULES,
            f"init.weight: {self.weight!r} is not one of {', '.join(WEIGHT_RULES)}",
        )
        check(
            self.bias in BIAS_RULES,
            f"init.bias: {self.bias!r} is not one of {', '.join(BIAS_RULES)}",
        )
        check(self.scope in SCOPES, f"init.scope: {self.scope!r} is not one of {', '.join(SCOPES)}")
        try:
            scale = float(self.bias_scale)
        except (TypeError, ValueError):
            raise UserError(
                f"init.bias_scale: {self.bias_scale!r} is not a number; {_SCALE_HELP}"
            ) from None
        check(
            math.isfinite(scale) and scale >= 0,
            f"init.bias_scale: {self.bias_scale!r} is not allowed; {_SCALE_HELP}",
        )
        self.bias_scale = scale

    @property
    def is_scaled(self) -> bool:
        return bias_is_scaled(self.bias)

    @torch.no_grad()
    def apply(self, net: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
        """Initialize `net` in place and return it. Draws from `generator`, else from the
        global RNG (which train.py seeds)."""
        weight_rule, bias_rule = WEIGHT_RULES[self.weight], BIAS_RULES[self.bias]
        for layer in init_layers(net, self.scope):
            if weight_rule is None or bias_rule is None:
                layer.reset_parameters()  # PyTorch's defaults, drawn from the global RNG
            if weight_rule is not None:
                weight_rule(layer, layer.weight, generator)
            if layer.bias is not None and bias_rule is not None:
                bias_rule(layer, layer.bias, generator)
                if self.is_scaled:
                    layer.bias.mul_(self.bias_scale)
        if self.scope == "all":
            for layer in net.modules():
                if isinstance(layer, NORM_LAYERS) and getattr(layer, "weight", None) is not None:
                    nn.init.ones_(layer.weight)
                    nn.init.zeros_(layer.bias)
        return net

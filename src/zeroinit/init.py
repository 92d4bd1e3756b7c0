"""The init schemes. One function, `apply_init`, serves every model.

A scheme is data, not code: a weight rule, a bias rule and a bias scale. It is applied to
every Linear and Conv layer at any depth (output layer, bottlenecks and shortcuts included);
normalization layers get weight 1, bias 0. The scale multiplies only the random bias rules,
as in the paper's Figures 4 and 6.
"""
import math

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


# None = keep what PyTorch's reset_parameters drew (kaiming_uniform with a=sqrt(5)).
WEIGHT_RULES = {"pytorch": None, "zero": _zero, "lecun_uniform": _lecun_uniform}
BIAS_RULES = {"pytorch": None, "zero": _zero, "normal": _normal, "uniform": _uniform}
SCALED_BIAS_RULES = {"normal", "uniform"}


def validate_init(weight: str, bias: str, bias_scale: float) -> None:
    check(weight in WEIGHT_RULES,
          f"init.weight: {weight!r} is not one of {', '.join(WEIGHT_RULES)}")
    check(bias in BIAS_RULES, f"init.bias: {bias!r} is not one of {', '.join(BIAS_RULES)}")
    try:
        scale = float(bias_scale)
    except (TypeError, ValueError):
        raise UserError(f"init.bias_scale: {bias_scale!r} is not a number; "
                        "allowed: a finite number >= 0, or bias_scale=down|none|up") from None
    check(math.isfinite(scale) and scale >= 0,
          f"init.bias_scale: {bias_scale!r} is not allowed; "
          "allowed: a finite number >= 0, or bias_scale=down|none|up")


@torch.no_grad()
def apply_init(net: nn.Module, weight: str = "pytorch", bias: str = "pytorch",
               bias_scale: float = 1.0, generator: torch.Generator | None = None,
               **_ignored) -> nn.Module:
    """Initialize every Linear/Conv of `net` in place and return it.

    `weight`/`bias` name rules in WEIGHT_RULES/BIAS_RULES; `bias_scale` multiplies the random
    bias rules. Extra keys of an init config (its `name`) are ignored so a config can be
    splatted in directly.
    """
    validate_init(weight, bias, bias_scale)
    for layer in net.modules():
        if isinstance(layer, INIT_LAYERS):
            if WEIGHT_RULES[weight] is None or BIAS_RULES[bias] is None:
                layer.reset_parameters()  # PyTorch's defaults, drawn from the global RNG
            if WEIGHT_RULES[weight] is not None:
                WEIGHT_RULES[weight](layer, layer.weight, generator)
            if layer.bias is not None and BIAS_RULES[bias] is not None:
                BIAS_RULES[bias](layer, layer.bias, generator)
                if bias in SCALED_BIAS_RULES:
                    layer.bias.mul_(float(bias_scale))
        elif isinstance(layer, NORM_LAYERS) and getattr(layer, "weight", None) is not None:
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net

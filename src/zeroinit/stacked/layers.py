"""K networks of one architecture as one network: every layer holds the K members' parameters
stacked along a leading dimension, and one kernel call computes all K members.

`stack_nets([net_0, ..., net_K-1])` deep-copies net_0's module tree and replaces each layer
by its stacked twin, so module names stay those of the separate run (`0.weight`,
`layers.3.conv2.bias`, ...) and member k's parameters are `p[k]` for every tensor `p` of the
stacked net (`member_state_dict`). Activations flow as (K, B, ...) tensors:

  Linear       batched matmul: (K, out, in) x (K, in, B) + bias (K, out, 1), seen as (K, B, out)
  Conv2d       one grouped convolution over (B, K*C, H, W) with groups = K
  BatchNorm2d  one BatchNorm over K*C channels: batch statistics and running statistics are
               per channel, so per member, exactly as K separate BatchNorms
  pooling      channel-wise over (B, K*C, H, W)
  Flatten      (K, B, C, H, W) -> (K, B, C*H*W), the separate run's order
  activations  elementwise: applied to the stacked tensor as they are

Members never mix: no operation above reads across the member dimension, so a member whose
values become NaN/inf leaves the others untouched. A layer this file does not know cannot be
stacked (`StackError`): the launcher then trains those runs one by one.
"""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from zeroinit.models.activation import ACTIVATIONS


class StackError(ValueError):
    """A network that cannot be stacked (a layer type without a stacked twin)."""


def _conv_in(x: torch.Tensor) -> torch.Tensor:
    """(K, B, C, H, W) -> (B, K*C, H, W). Free when x came out of _conv_out (a transposed
    view of a contiguous (B, K, C, H, W) tensor), a copy otherwise (the network's input)."""
    k, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])


def _conv_out(y: torch.Tensor, k: int) -> torch.Tensor:
    """(B, K*C, H, W) -> (K, B, C, H, W) as a view."""
    b, kc = y.shape[:2]
    return y.view(b, k, kc // k, *y.shape[2:]).transpose(0, 1)


class StackedLinear(nn.Module):
    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = (
            nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
            if layers[0].bias is not None
            else None
        )

    def forward(self, x):  # (K, B, in) -> (K, B, out), a transposed view of (K, out, B)
        if x.requires_grad and x.stride(-1) == 1:  # features innermost: after a conv's Flatten
            # (transposed outside the function: a view made inside one may not be changed
            # in place afterwards)
            return _FeaturesInnermost.apply(x, self.weight, self.bias).transpose(1, 2)
        return _linear(x, self.weight, self.bias)


def _linear(x, weight, bias):
    # W @ x^T, not x @ W^T: autograd then computes the weight's gradient (gy^T @ x) straight
    # into the weight's own (K, out, in) layout, where x @ W^T has it written transposed,
    # which on the CPU made a wide layer's backward several times that of the plain layer
    # (benchmarks/stacked_bench.py measures the stack against it). The output, a view of
    # (K, out, B), has the batch innermost; the next layer's x^T is contiguous again.
    return _linear_t(x, weight, bias).transpose(1, 2)


def _linear_t(x, weight, bias):  # (K, out, B) = W @ x^T + b
    xt = x.transpose(1, 2)
    if bias is None:
        return torch.bmm(weight, xt)
    return torch.baddbmm(bias.unsqueeze(2), weight, xt)


class _FeaturesInnermost(torch.autograd.Function):
    """_linear's (K, out, B) for an input with its features innermost, whose gradient is
    wanted: a stacked conv net's activations as its Flatten hands them on. Autograd's own
    backward of _linear writes the input's gradient batch-innermost (W^T @ gy^T); the
    activation before it then read two layouts at once and the conv before that copied the
    whole gradient (mnist_cnn, 2 members, 2-core CPU: a step took ~1.6x two plain runs'
    steps, ~1.3x now). Here it is gy @ W, as the plain Linear computes it, in the input's
    layout. Not used for the other inputs: a custom function costs ~80 us of Python a step
    (15 logistic regressions)."""

    @staticmethod
    def forward(x, weight, bias):
        return _linear_t(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, gyt):  # gyt (K, out, B)
        # in the forward's compute dtype: bf16 under autocast (bf16-mixed), as the gradients
        # of autocast's own ops; a no-op otherwise
        x, weight = (t.to(gyt.dtype) for t in ctx.saved_tensors)
        gy = gyt.transpose(1, 2)  # (K, B, out)
        gx = torch.bmm(gy, weight) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(gyt, x) if ctx.needs_input_grad[1] else None
        gb = gyt.sum(2) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


class StackedConv2d(nn.Module):
    def __init__(self, layers: list[nn.Conv2d]):
        super().__init__()
        first = layers[0]
        if isinstance(first.padding, str):
            raise StackError(f"Conv2d with padding {first.padding!r}")
        self.k, self.groups = len(layers), first.groups
        self.stride, self.padding, self.dilation = first.stride, first.padding, first.dilation
        # any other mode pads first, as nn.Conv2d does (per channel: members never mix)
        self.padding_mode = first.padding_mode
        self._pad = first._reversed_padding_repeated_twice
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = (
            nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
            if first.bias is not None
            else None
        )

    def forward(self, x):
        w = self.weight.flatten(0, 1)  # (K*out, in/groups, kh, kw): member k's filters k-th
        b = None if self.bias is None else self.bias.flatten()
        x, padding = _conv_in(x), self.padding
        if self.padding_mode != "zeros":
            x, padding = F.pad(x, self._pad, mode=self.padding_mode), 0
        y = F.conv2d(x, w, b, self.stride, padding, self.dilation, self.groups * self.k)
        return _conv_out(y, self.k)


class StackedBatchNorm(nn.Module):
    """BatchNorm1d/2d of K members as one BatchNorm over K*C channels; parameters and running
    statistics stored (K, C), so member k's are row k."""

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]):
        super().__init__()
        first = layers[0]
        self.k, self.eps, self.momentum = len(layers), first.eps, first.momentum
        self.track_running_stats = first.track_running_stats
        if first.affine:
            self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
            self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))
        else:
            self.weight = self.bias = None
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.stack([m.running_mean for m in layers]))
            self.register_buffer("running_var", torch.stack([m.running_var for m in layers]))
            self.register_buffer("num_batches_tracked", first.num_batches_tracked.clone())
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):  # as nn.BatchNorm2d.forward, on K*C channels
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or self.running_mean is None
        flat = lambda t: None if t is None else t.view(-1)  # noqa: E731 - views update in place
        running = not self.training or self.track_running_stats
        y = F.batch_norm(
            _conv_in(x) if x.dim() > 3 else x.transpose(0, 1).flatten(1, 2),
            flat(self.running_mean) if running else None,
            flat(self.running_var) if running else None,
            flat(self.weight),
            flat(self.bias),
            use_batch,
            factor,
            self.eps,
        )
        if x.dim() > 3:
            return _conv_out(y, self.k)
        return y.view(x.shape[1], self.k, -1).transpose(0, 1)  # BatchNorm1d on (K, B, C)


class ChannelWise(nn.Module):
    """A layer that acts on each channel alone (pooling): applied to (B, K*C, H, W)."""

    def __init__(self, layer: nn.Module, k: int):
        super().__init__()
        self.layer, self.k = layer, k

    def forward(self, x):
        return _conv_out(self.layer(_conv_in(x)), self.k)


class StackedFlatten(nn.Module):
    def __init__(self, layer: nn.Flatten):
        super().__init__()
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise StackError("Flatten other than flatten(1)")

    def forward(self, x):  # (K, B, ...) -> (K, B, features), the separate run's order
        return x.reshape(x.shape[0], x.shape[1], -1)


# Elementwise layers work on the stacked tensor unchanged; containers are recursed into.
ELEMENTWISE = (*ACTIVATIONS.values(), nn.Identity)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _stacked_layer(layers: list[nn.Module]) -> nn.Module | None:
    """The stacked twin of one layer (the same layer in every member), or None to recurse."""
    first, k = layers[0], len(layers)
    if isinstance(first, nn.Linear):
        return StackedLinear(layers)
    if isinstance(first, nn.Conv2d):
        return StackedConv2d(layers)
    if isinstance(first, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return StackedBatchNorm(layers)
    if isinstance(first, CHANNELWISE):
        return ChannelWise(copy.deepcopy(first), k)
    if isinstance(first, nn.Flatten):
        return StackedFlatten(first)
    if isinstance(first, ELEMENTWISE):
        return copy.deepcopy(first)
    if isinstance(first, CONTAINERS):  # (an empty Sequential is the identity: a shortcut)
        return None
    if any(True for _ in first.parameters(recurse=False)) or any(
        True for _ in first.buffers(recurse=False)
    ):
        raise StackError(f"no stacked version of {type(first).__name__}")
    if not list(first.children()):  # a parameter-free leaf we do not know: it may mix
        raise StackError(f"no stacked version of {type(first).__name__}")
    return None


def _stack_into(target: nn.Module, members: list[nn.Module]) -> None:
    for name, child in list(target.named_children()):
        layers = [getattr(m, name) for m in members]
        twin = _stacked_layer(layers)
        if twin is None:  # a container or composite (Bottleneck): its own forward is kept
            _stack_into(child, layers)
        else:
            setattr(target, name, twin)


def stack_nets(nets: list[nn.Module]) -> nn.Module:
    """One network computing all of `nets` (same architecture, any parameters) at once.
    Input (K, B, ...) -> output (K, B, classes). Raises StackError if it cannot."""
    if not nets:
        raise ValueError("no networks to stack")
    names = [[n for n, _ in net.named_parameters()] for net in nets]
    shapes = [[p.shape for p in net.parameters()] for net in nets]
    if any(n != names[0] for n in names) or any(s != shapes[0] for s in shapes):
        raise StackError("the networks differ in architecture")
    twin = _stacked_layer(nets)
    if twin is not None:  # a single layer, not a tree
        return twin
    stacked = copy.deepcopy(nets[0])
    _stack_into(stacked, nets)
    return stacked


def member_state_dict(stacked: nn.Module, k: int) -> dict:
    """Member k's state_dict, with the keys and shapes of the separate run's network."""
    return {
        name: (t if t.dim() == 0 else t[k]).detach().clone()
        for name, t in stacked.state_dict().items()
    }


def stacked_state_dict(members: list[dict]) -> dict:
    """The inverse: a stacked net's state_dict from its members' state_dicts (in order).
    Shared scalars (num_batches_tracked, equal in every member) are taken from member 0."""
    return {
        name: t if t.dim() == 0 else torch.stack([m[name] for m in members])
        for name, t in members[0].items()
    }

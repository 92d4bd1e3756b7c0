"""Hidden-layer activations. The paper uses ELU: with zero weights only the bias sets the
sign of a pre-activation, and ReLU would silence every unit whose bias is negative."""

from torch import nn

from zeroinit.errors import check

ACTIVATIONS = {
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def make_activation(name: str) -> nn.Module:
    check(name in ACTIVATIONS, f"model.activation: {name!r} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()

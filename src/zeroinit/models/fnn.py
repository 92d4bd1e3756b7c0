"""Feed-forward nets: flatten, Linear layers, activation after every hidden layer, none after
the last. With no hidden layers it is the paper's logistic-regression baseline."""

import math

from torch import nn

from zeroinit.errors import check
from zeroinit.models.activation import make_activation


def layer_widths(value, key: str = "model.hidden") -> list[int]:
    """A list of layer widths, or a UserError naming `key` (model.hidden=100 meant [100])."""
    ok = (
        (isinstance(value, (list, tuple)) or hasattr(value, "__len__"))
        and not isinstance(value, (str, bytes))
        and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in value)
    )
    check(
        ok,
        f"{key}: {value!r} is not allowed; allowed: a list of layer widths (integers "
        f"> 0), e.g. {key}=[{value if isinstance(value, int) else 100}] or [] for none",
    )
    return list(value)


class FNN(nn.Sequential):
    def __init__(self, input_shape, num_classes: int, hidden=(), activation: str = "elu"):
        make_activation(activation)  # checked even without hidden layers (logreg)
        widths = [math.prod(input_shape), *layer_widths(hidden), num_classes]
        layers = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(make_activation(activation))
        super().__init__(*layers)

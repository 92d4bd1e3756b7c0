"""Feed-forward nets: flatten, Linear layers, activation after every hidden layer, none after
the last. With no hidden layers it is the paper's logistic-regression baseline."""
import math

from torch import nn

from zeroinit.models.activation import make_activation


class FNN(nn.Sequential):
    def __init__(self, input_shape, num_classes: int, hidden=(), activation: str = "elu"):
        make_activation(activation)  # checked even without hidden layers (logreg)
        widths = [math.prod(input_shape), *hidden, num_classes]
        layers = [nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(make_activation(activation))
        super().__init__(*layers)

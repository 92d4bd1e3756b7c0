"""The paper's models. Each takes the dataset's `input_shape` (C, H, W) and `num_classes`, so
every model runs on every dataset it fits; `activation` is configurable (ELU by default)."""

from zeroinit.models.activation import ACTIVATIONS, make_activation
from zeroinit.models.cnn import CNN
from zeroinit.models.fnn import FNN
from zeroinit.models.resnet import ResNet

__all__ = ["ACTIVATIONS", "make_activation", "FNN", "CNN", "ResNet"]

"""The paper's CNNs as one configurable class.

`stages` is a list of lists of conv widths. Inside a stage the convs keep the spatial size
(padding = kernel_size // 2); with `pool_bn` each stage ends in MaxPool 2x2 and BatchNorm, as
in the CIFAR CNN. Then flatten and Linear layers (`hidden`), activation after each hidden one.
`batchnorm=False` puts an Identity where those BatchNorms were (docs/findings.md: a BatchNorm
behind zero-weight convs cancels their random biases). `padding_mode` is Conv2d's: `zeros` (the
paper's) makes a border patch of a constant input differ from an interior one, `circular` does
not, which is how docs/findings.md separates rounding from padding.

  MNIST CNN: stages [[16, 32]], kernel 5, no pool/BN, hidden []
  CIFAR CNN: stages [[32, 64], [128, 128], [256, 256]], kernel 3, pool_bn, hidden [1024, 512]
"""

from torch import nn

from zeroinit.errors import check
from zeroinit.models.activation import make_activation
from zeroinit.models.fnn import layer_widths

PADDING_MODES = ("zeros", "circular", "reflect", "replicate")  # nn.Conv2d's


class CNN(nn.Sequential):
    def __init__(
        self,
        input_shape,
        num_classes: int,
        stages,
        kernel_size: int = 3,
        pool_bn: bool = False,
        hidden=(),
        activation: str = "elu",
        batchnorm: bool = True,
        padding_mode: str = "zeros",
    ):
        check(
            padding_mode in PADDING_MODES,
            f"model.padding_mode: {padding_mode!r} is not one of {', '.join(PADDING_MODES)}",
        )
        channels, height, width = input_shape
        hidden = layer_widths(hidden)
        layers = []
        for stage in (layer_widths(stage, "model.stages[i]") for stage in stages):
            for out in stage:
                layers += [
                    nn.Conv2d(
                        channels,
                        out,
                        kernel_size,
                        padding=kernel_size // 2,
                        padding_mode=padding_mode,
                    ),
                    make_activation(activation),
                ]
                channels = out
            if pool_bn:
                layers += [
                    nn.MaxPool2d(2, 2),
                    nn.BatchNorm2d(channels) if batchnorm else nn.Identity(),
                ]
                height, width = height // 2, width // 2
        widths = [channels * height * width, *hidden, num_classes]
        layers.append(nn.Flatten())
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(make_activation(activation))
        super().__init__(*layers)

"""ResNet-50, CIFAR variant, changed as the paper says.

The common CIFAR ResNet-50 (3x3 stride-1 stem with 64 channels + BatchNorm, bottleneck stages
[3, 4, 6, 3], widths 64/128/256/512, expansion 4, strides 1/2/2/2, global average pool,
Linear(2048 -> classes)) with: a learnable bias on every conv, ELU instead of ReLU, and no
BatchNorm after the first (1x1) conv of each bottleneck. Shortcut = 1x1 conv + BatchNorm where
the shape changes. `batchnorm=False` puts an Identity in place of every BatchNorm (each one
follows a conv; docs/findings.md: behind zero-weight convs a BatchNorm cancels their random
biases).
"""

from torch import nn

from zeroinit.models.activation import make_activation


def norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self, in_ch: int, width: int, stride: int, activation: str, batchnorm: bool = True
    ):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=True)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=True)
        self.bn2 = norm(width, batchnorm)
        self.act2 = make_activation(activation)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=True)
        self.bn3 = norm(out_ch, batchnorm)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=True), norm(out_ch, batchnorm)
            )
        self.act_out = make_activation(activation)

    def forward(self, x):
        out = self.act1(self.conv1(x))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act_out(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(
        self,
        input_shape,
        num_classes: int,
        blocks=(3, 4, 6, 3),
        widths=(64, 128, 256, 512),
        activation: str = "elu",
        batchnorm: bool = True,
    ):
        super().__init__()
        stem = widths[0]  # 64 in the paper's net; follows the widths so a narrow net is narrow
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], stem, 3, padding=1, bias=True),
            norm(stem, batchnorm),
            make_activation(activation),
        )
        stages, in_ch = [], stem
        for i, (n, width) in enumerate(zip(blocks, widths)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(Bottleneck(in_ch, width, stride, activation, batchnorm))
                in_ch = width * Bottleneck.expansion
        self.layers = nn.Sequential(*stages)
        # Adaptive pooling = the 4x4 average pool on 32x32 inputs, and still works on 28x28.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.layers(self.stem(x))))

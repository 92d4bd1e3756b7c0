"""The paper's architectures exactly as docs/paper.md states them, built from the real configs."""

import pytest
import torch
from torch import nn

from zeroinit.config import build
from zeroinit.errors import UserError
from zeroinit.models import ACTIVATIONS

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
_resnets = {}


def make_model(make_cfg, model, input_shape=CIFAR, num_classes=10, *overrides):
    cfg = make_cfg(f"model={model}", *overrides)
    return build(cfg.model, ignore=["name"], input_shape=input_shape, num_classes=num_classes)


def resnet(make_cfg, activation="elu"):
    if activation not in _resnets:  # ~1 s per build; shared by the tests below
        _resnets[activation] = make_model(
            make_cfg, "resnet50", CIFAR, 10, f"model.activation={activation}"
        )
    return _resnets[activation]


def describe(net):
    """The leaf layers in order, as comparable tuples."""
    out = []
    for m in net.children():
        if isinstance(m, nn.Conv2d):
            out.append(
                (
                    "conv",
                    m.in_channels,
                    m.out_channels,
                    m.kernel_size,
                    m.stride,
                    m.padding,
                    m.bias is not None,
                )
            )
        elif isinstance(m, nn.Linear):
            out.append(("linear", m.in_features, m.out_features, m.bias is not None))
        elif isinstance(m, nn.MaxPool2d):
            out.append(("maxpool", m.kernel_size, m.stride))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features))
        else:
            out.append(type(m).__name__)
    return out


def conv(i, o, k, p):
    return ("conv", i, o, (k, k), (1, 1), (p, p), True)


def lin(i, o):
    return ("linear", i, o, True)


@pytest.mark.parametrize(
    "model,shape,expected",
    [
        ("logreg", MNIST, ["Flatten", lin(784, 10)]),
        ("logreg", CIFAR, ["Flatten", lin(3072, 10)]),
        ("mnist_fnn", MNIST, ["Flatten", lin(784, 500), "ELU", lin(500, 10)]),
        (
            "cifar_fnn",
            CIFAR,
            [
                "Flatten",
                lin(3072, 512),
                "ELU",
                lin(512, 256),
                "ELU",
                lin(256, 128),
                "ELU",
                lin(128, 10),
            ],
        ),
        (
            "mnist_cnn",
            MNIST,
            [conv(1, 16, 5, 2), "ELU", conv(16, 32, 5, 2), "ELU", "Flatten", lin(25088, 10)],
        ),
        (
            "cifar_cnn",
            CIFAR,
            [
                conv(3, 32, 3, 1),
                "ELU",
                conv(32, 64, 3, 1),
                "ELU",
                ("maxpool", 2, 2),
                ("bn", 64),
                conv(64, 128, 3, 1),
                "ELU",
                conv(128, 128, 3, 1),
                "ELU",
                ("maxpool", 2, 2),
                ("bn", 128),
                conv(128, 256, 3, 1),
                "ELU",
                conv(256, 256, 3, 1),
                "ELU",
                ("maxpool", 2, 2),
                ("bn", 256),
                "Flatten",
                lin(4096, 1024),
                "ELU",
                lin(1024, 512),
                "ELU",
                lin(512, 10),
            ],
        ),
    ],
)
def test_exact_sequential_architectures(make_cfg, model, shape, expected):
    net = make_model(make_cfg, model, shape)
    assert describe(net) == expected
    out = net(torch.rand(3, *shape))
    assert out.shape == (3, 10)


def bottleneck_params(in_ch, width, shortcut):
    out = 4 * width
    n = in_ch * width + width  # conv1 1x1 + bias, no BN after it
    n += width * width * 9 + width + 2 * width  # conv2 3x3 + bias, BN
    n += width * out + out + 2 * out  # conv3 1x1 + bias, BN
    if shortcut:
        n += in_ch * out + out + 2 * out  # 1x1 conv + bias, BN
    return n


def test_resnet50_structure(make_cfg):
    net = resnet(make_cfg)
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    # docs/paper.md: "54 conv/linear layers" = stem + 16 bottlenecks x 3 + 4 shortcuts, + the fc
    assert len(convs) == 1 + 16 * 3 + 4 == 53
    assert len(linears) == 1
    assert len(convs) + len(linears) == 54
    assert all(m.bias is not None for _, m in convs + linears), "every conv has a bias"
    assert (linears[0][1].in_features, linears[0][1].out_features) == (2048, 10)

    stem = convs[0][1]
    assert (stem.in_channels, stem.out_channels, stem.kernel_size, stem.stride) == (
        3,
        64,
        (3, 3),
        (1, 1),
    )

    # stages [3, 4, 6, 3], widths 64/128/256/512, expansion 4, strides 1/2/2/2
    blocks = list(net.layers)
    assert len(blocks) == 16
    expected, in_ch = [], 64
    for n, width, stride in zip((3, 4, 6, 3), (64, 128, 256, 512), (1, 2, 2, 2)):
        for j in range(n):
            expected.append((in_ch, width, stride if j == 0 else 1))
            in_ch = 4 * width
    shortcuts = 0
    total = 3 * 64 * 9 + 64 + 2 * 64 + 2048 * 10 + 10  # stem conv + BN, fc
    for block, (in_ch, width, stride) in zip(blocks, expected):
        assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == (1, 1)
        assert (block.conv1.in_channels, block.conv1.out_channels) == (in_ch, width)
        assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (stride, stride)
        assert (block.conv3.in_channels, block.conv3.out_channels) == (width, 4 * width)
        has_shortcut = len(block.shortcut) > 0
        assert has_shortcut == (stride != 1 or in_ch != 4 * width)
        if has_shortcut:
            shortcuts += 1
            sc_conv, sc_bn = block.shortcut
            assert isinstance(sc_conv, nn.Conv2d) and isinstance(sc_bn, nn.BatchNorm2d)
            assert sc_conv.kernel_size == (1, 1) and sc_conv.stride == (stride, stride)
        total += bottleneck_params(in_ch, width, has_shortcut)
    assert shortcuts == 4
    # no BN after conv1: the parameter count is exactly the paper's variant
    assert sum(p.numel() for p in net.parameters()) == total
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 16 * 2 + 4


def test_resnet50_forward_order(make_cfg):
    """Run a batch and record which layers execute: each bottleneck's conv1 goes straight
    into the activation (no BN), conv2 and conv3 into BatchNorm; the final feature map is 4x4
    before the average pool, as in the CIFAR ResNet."""
    net = resnet(make_cfg).eval()
    order, shapes = [], {}

    def record(name):
        def hook(mod, inp, out):
            order.append((name, type(mod).__name__))
            shapes.setdefault(name, inp[0].shape)

        return hook

    hooks = [
        m.register_forward_hook(record(name))
        for name, m in net.named_modules()
        if not list(m.children()) or name == "pool"
    ]
    try:
        with torch.no_grad():
            out = net(torch.rand(2, *CIFAR))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 10)
    assert shapes["pool"] == (2, 2048, 4, 4)
    follows = {order[i][0]: order[i + 1][1] for i in range(len(order) - 1)}
    for i in range(16):
        assert follows[f"layers.{i}.conv1"] == "ELU"
        assert follows[f"layers.{i}.conv2"] == "BatchNorm2d"
        assert follows[f"layers.{i}.conv3"] == "BatchNorm2d"
    assert follows["stem.0"] == "BatchNorm2d"


@pytest.mark.parametrize(
    "model,shape,classes",
    [
        ("logreg", MNIST, 10),
        ("logreg", CIFAR, 10),
        ("logreg", (3, 12, 10), 3),
        ("mnist_fnn", MNIST, 10),
        ("mnist_cnn", MNIST, 10),
        ("cifar_fnn", CIFAR, 10),
        ("cifar_cnn", CIFAR, 10),
        ("mnist_fnn", CIFAR, 7),
        ("mnist_cnn", (3, 12, 10), 4),
    ],
)
def test_output_shape_follows_the_dataset(make_cfg, model, shape, classes):
    net = make_model(make_cfg, model, shape, classes)
    assert net(torch.rand(5, *shape)).shape == (5, classes)


def test_resnet50_on_mnist_shape(make_cfg):
    net = make_model(make_cfg, "resnet50", MNIST, 10)
    with torch.no_grad():
        assert net.eval()(torch.rand(2, *MNIST)).shape == (2, 10)


def activation_types(net):
    return {type(m) for m in net.modules() if isinstance(m, tuple(ACTIVATIONS.values()))}


@pytest.mark.parametrize("activation", ["elu", "relu", "leaky_relu", "sigmoid"])
@pytest.mark.parametrize(
    "model,shape,count",
    [
        ("mnist_fnn", MNIST, 1),
        ("cifar_fnn", CIFAR, 3),
        ("mnist_cnn", MNIST, 2),
        ("cifar_cnn", CIFAR, 8),
    ],
)
def test_activation_option(make_cfg, model, shape, count, activation):
    net = make_model(make_cfg, model, shape, 10, f"model.activation={activation}")
    cls = ACTIVATIONS[activation]
    acts = [m for m in net.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    assert len(acts) == count  # one after every hidden layer, none after the last
    assert all(type(m) is cls for m in acts)
    assert not isinstance(list(net.children())[-1], tuple(ACTIVATIONS.values()))
    x = torch.rand(4, *shape)
    assert torch.isfinite(net(x)).all()


@pytest.mark.parametrize("activation", ["elu", "relu"])
def test_resnet50_activation_option(make_cfg, activation):
    net = resnet(make_cfg, activation)
    acts = [m for m in net.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
    assert len(acts) == 1 + 16 * 3
    assert activation_types(net) == {ACTIVATIONS[activation]}


def test_elu_is_the_default(make_cfg):
    for model in ("mnist_fnn", "cifar_fnn", "mnist_cnn", "cifar_cnn"):
        cfg = make_cfg(f"model={model}")
        assert cfg.model.activation == "elu"


@pytest.mark.parametrize("model", ["mnist_fnn", "cifar_cnn", "resnet50", "logreg"])
def test_unknown_activation_is_a_user_error(make_cfg, model):
    with pytest.raises(UserError, match=r"model\.activation: 'swish'.*elu.*relu") as e:
        make_model(make_cfg, model, CIFAR, 10, "model.activation=swish")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("model", ["cifar_cnn", "resnet50"])
def test_batchnorm_false_puts_identity_where_each_batchnorm_was(make_cfg, model):
    """model.batchnorm=false: the same layers in the same places, each BatchNorm an Identity
    (the ResNet at 1/16 width here: the option does not depend on it)."""
    narrow = ["model.widths=[4,8,16,32]"] if model == "resnet50" else []
    with_bn = make_model(make_cfg, model, CIFAR, 10, *narrow)
    without = make_model(make_cfg, model, CIFAR, 10, *narrow, "model.batchnorm=false")
    kinds = {name: type(m) for name, m in with_bn.named_modules()}
    bns = [name for name, kind in kinds.items() if kind is nn.BatchNorm2d]
    assert len(bns) == {"cifar_cnn": 3, "resnet50": 37}[model]
    assert {name: type(m) for name, m in without.named_modules()} == {
        name: nn.Identity if kind is nn.BatchNorm2d else kind for name, kind in kinds.items()
    }
    assert without(torch.rand(2, *CIFAR)).shape == (2, 10)

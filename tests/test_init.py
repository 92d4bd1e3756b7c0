"""Every model x every init scheme, built as train.py builds them: compose the real configs,
`build_model(cfg, ...)`, then `build(cfg.init).apply(net)`. Before each init every parameter
is poisoned with a sentinel, so a layer the init function misses (a nested bottleneck or
shortcut conv, the output layer, a BatchNorm) shows up as a failure instead of passing on
leftover values."""

import math

import pytest
import torch
from torch import nn

from zeroinit.config import build
from zeroinit.errors import UserError
from zeroinit.init import InitScheme, bias_is_scaled

MODELS = ["logreg", "mnist_fnn", "mnist_cnn", "cifar_fnn", "cifar_cnn", "resnet50"]
INITS = ["pytorch", "lecun", "zero", "bias_normal", "bias_uniform"]
DATASET = {
    "logreg": "mnist5k",
    "mnist_fnn": "mnist5k",
    "mnist_cnn": "mnist5k",
    "cifar_fnn": "cifar10",
    "cifar_cnn": "cifar10",
    "resnet50": "cifar10",
}
# Conv/Linear layers each model has (docs/paper.md; ResNet-50: "54 conv/linear layers").
N_LAYERS = {
    "logreg": 1,
    "mnist_fnn": 2,
    "mnist_cnn": 3,
    "cifar_fnn": 4,
    "cifar_cnn": 9,
    "resnet50": 54,
}
POISON = 7.25

_nets = {}  # model name -> net; building ResNet-50 takes ~1 s, so each model is built once


def compose_and_build(make_cfg, model, *overrides):
    """Compose as train.py does, build the model (once per model name), poison it, apply the
    composed init. Returns (cfg, net)."""
    cfg = make_cfg(f"model={model}", f"dataset={DATASET[model]}", *overrides)
    if model not in _nets:
        _nets[model] = build(
            cfg.model,
            ignore=["name"],
            input_shape=tuple(cfg.dataset.input_shape),
            num_classes=cfg.dataset.num_classes,
        )
    net = _nets[model]
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(POISON)
    build(cfg.init).apply(net)
    return cfg, net


def init_layers(net):
    layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert layers
    return layers


def bn_layers(net):
    return [(n, m) for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]


def expected_fan_in(layer) -> int:
    if isinstance(layer, nn.Linear):
        return layer.in_features
    kh, kw = layer.kernel_size
    return layer.in_channels * kh * kw  # docs/paper.md: fan_in = C_in * k_w * k_h


def pooled_biases(net) -> torch.Tensor:
    return torch.cat([m.bias.detach().flatten() for _, m in init_layers(net)])


def check_bn(net):
    for name, bn in bn_layers(net):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)), name
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias)), name


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_every_init(make_cfg, model, init):
    cfg, net = compose_and_build(make_cfg, model, f"init={init}")
    layers = init_layers(net)
    assert len(layers) == N_LAYERS[model]
    for name, layer in layers:
        assert layer.bias is not None, f"{name} has no bias"  # every conv has one (ResNet too)
    if model == "resnet50":  # the nested layers the authors' code missed are really here
        names = [n for n, _ in layers]
        assert sum(".shortcut." in n for n in names) == 4
        assert sum(n.endswith(".conv1") for n in names) == 16
    check_bn(net)

    if init == "zero":
        for name, layer in layers:
            assert torch.count_nonzero(layer.weight) == 0, name
            assert torch.count_nonzero(layer.bias) == 0, name
    elif init in ("bias_normal", "bias_uniform"):
        for name, layer in layers:
            assert torch.count_nonzero(layer.weight) == 0, name
            # each layer's biases are drawn at random, not left at a constant
            assert layer.bias.numel() == 1 or layer.bias.std() > 0, name
        b = pooled_biases(net)
        n = b.numel()
        if init == "bias_normal":
            mean, std = 0.0, 1.0
        else:
            mean, std = 0.5, 1 / math.sqrt(12)
            assert b.min() >= 0 and b.max() < 1
        # 5 standard errors: tight for the big models, loose but sane for logreg's 10 biases
        assert abs(b.mean().item() - mean) < 5 * std / math.sqrt(n)
        assert abs(b.std().item() - std) < 5 * std * math.sqrt(2 / (n - 1)) + 1e-3
    elif init == "lecun":
        for name, layer in layers:
            bound = math.sqrt(3.0 / expected_fan_in(layer))
            w = layer.weight.detach()
            assert w.abs().max() <= bound, name
            if w.numel() >= 1000:  # the whole range is used, uniformly
                assert w.abs().max() > 0.95 * bound, name
                assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound, name
            assert torch.count_nonzero(layer.bias) == 0, name
    elif init == "pytorch":
        for name, layer in layers:
            bound = 1 / math.sqrt(expected_fan_in(layer))  # kaiming_uniform(a=sqrt(5))
            w, b = layer.weight.detach(), layer.bias.detach()
            assert (w != POISON).all() and (b != POISON).all(), name
            # not zeroed (a float32 uniform draw is exactly 0 about once in 10^7)
            assert (w == 0).float().mean() < 1e-4, name
            assert w.abs().max() <= bound + 1e-6, name
            assert b.abs().max() <= bound + 1e-6, name
            if w.numel() >= 1000:
                assert w.std() > 0.5 * bound / math.sqrt(3), name


LEVELS = [
    ("bias_scale=down", 0.01),
    ("bias_scale=up", 100.0),
    ("init.bias_scale=5", 5.0),
    ("bias_scale=none", 1.0),
]
SCALE_CASES = [(m, *level) for m in ("mnist_fnn", "cifar_cnn") for level in LEVELS] + [
    ("resnet50", "bias_scale=up", 100.0)
]  # ResNet-50: one level is enough (~1 s a case)


@pytest.mark.parametrize("bias", ["normal", "uniform"])
@pytest.mark.parametrize("model,level,scale", SCALE_CASES)
def test_bias_scale_multiplies(make_cfg, model, bias, level, scale):
    init = f"init=bias_{bias}"
    cfg, net = compose_and_build(make_cfg, model, init, level)
    assert cfg.init.bias_scale == scale
    torch.manual_seed(123)
    build(cfg.init).apply(net)
    scaled = pooled_biases(net).clone()
    torch.manual_seed(123)
    InitScheme(cfg.init.weight, cfg.init.bias, 1.0).apply(net)
    unscaled = pooled_biases(net)
    # Same draws, multiplied by the scale (exactly: the same float32 product)
    assert torch.equal(scaled, unscaled * scale)
    for _, layer in init_layers(net):  # the scale touches only the biases
        assert torch.count_nonzero(layer.weight) == 0
    n = scaled.numel()
    if bias == "normal":
        assert abs(scaled.std().item() - scale) < 0.1 * scale
    else:
        assert scaled.min() >= 0 and scaled.max() < scale
        assert abs(scaled.mean().item() - scale / 2) < 5 * scale / math.sqrt(12 * n)


def test_command_line_scale_beats_the_group(make_cfg):
    cfg = make_cfg("init=bias_uniform", "bias_scale=up", "init.bias_scale=5")
    assert cfg.init.bias_scale == 5


@pytest.mark.parametrize("init", ["zero", "lecun", "pytorch"])
def test_scale_does_not_touch_fixed_rules(make_cfg, init):
    """bias_scale multiplies only the random bias rules, as in the paper's Figs. 4 and 6."""
    cfg, net = compose_and_build(make_cfg, "mnist_fnn", f"init={init}", "bias_scale=up")
    for _, layer in init_layers(net):
        if init == "pytorch":
            assert layer.bias.abs().max() <= 1 / math.sqrt(layer.in_features)
        else:
            assert torch.count_nonzero(layer.bias) == 0


def test_init_is_seeded_by_the_global_rng(make_cfg):
    """The scheme draws from the global RNG, which train.py seeds: same seed, same biases."""
    cfg, net = compose_and_build(make_cfg, "cifar_cnn", "init=bias_normal")
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        build(cfg.init).apply(net)
        draws.append(pooled_biases(net).clone())
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_generator_argument_is_used():
    net = nn.Sequential(nn.Linear(4, 50), nn.ELU(), nn.Linear(50, 3))
    InitScheme("zero", "normal").apply(net, torch.Generator().manual_seed(5))
    first = pooled_biases(net).clone()
    torch.manual_seed(999)  # the global RNG must not matter when a generator is given
    InitScheme("zero", "normal").apply(net, torch.Generator().manual_seed(5))
    assert torch.equal(first, pooled_biases(net))


def test_nested_and_other_conv_layers():
    """Any depth, any Conv: a Conv1d inside two containers and a ModuleList still get the
    scheme; LayerNorm/GroupNorm get weight 1, bias 0."""
    inner = nn.ModuleList([nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4)])
    net = nn.Sequential(nn.Sequential(nn.Sequential(inner)), nn.LayerNorm(4), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(POISON)
    InitScheme("zero", "uniform").apply(net)
    for layer in (inner[0], net[2]):
        assert torch.count_nonzero(layer.weight) == 0
        assert (layer.bias >= 0).all() and (layer.bias < 1).all()
    for norm in (inner[1], net[1]):
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


@pytest.mark.parametrize(
    "kwargs,key",
    [
        ({"weight": "xavier"}, "init.weight"),
        ({"bias": "gaussian"}, "init.bias"),
        ({"bias_scale": float("nan")}, "init.bias_scale"),
        ({"bias_scale": float("inf")}, "init.bias_scale"),
        ({"bias_scale": -1.0}, "init.bias_scale"),
        ({"bias_scale": "big"}, "init.bias_scale"),
        ({"scope": "stem"}, "init.scope"),
    ],
)
def test_bad_scheme_raises_user_error_naming_the_key(kwargs, key):
    net = nn.Linear(3, 2)
    before = net.weight.detach().clone()
    with pytest.raises(UserError, match=key):
        InitScheme(**{"weight": "zero", "bias": "normal", "bias_scale": 1.0, **kwargs}).apply(net)
    assert torch.equal(net.weight, before)  # checked before anything is touched


@pytest.mark.parametrize("init", INITS)
def test_every_init_config_builds_an_init_scheme(make_cfg, init):
    """conf/init is a Hydra object like the optimizer: `_target_` builds an InitScheme whose
    `is_scaled` is what the report asks before it shows a bias scale."""
    scheme = build(make_cfg(f"init={init}").init)
    assert isinstance(scheme, InitScheme)
    assert scheme.name == init and scheme.scope == "all"
    assert scheme.is_scaled == (init in ("bias_normal", "bias_uniform"))
    assert scheme.is_scaled == bias_is_scaled(scheme.bias)


def test_bad_init_value_from_the_config_is_one_user_error(make_cfg):
    with pytest.raises(UserError, match="init.scope: 'stem' is not one of all, authors"):
        build(make_cfg("init=bias_normal", "init.scope=stem").init)


@pytest.mark.parametrize("init", ["bias_normal", "zero"])
def test_authors_scope_touches_only_stem_conv_and_classifier_of_resnet50(make_cfg, init):
    """init.scope=authors reproduces the authors' ResNet-50 code: of its 54 conv/linear layers
    only the stem conv and the classifier are re-initialized; every other parameter (the 52
    other layers, every BatchNorm) is left exactly as it was (here: the poison)."""
    cfg, net = compose_and_build(make_cfg, "resnet50", f"init={init}", "init.scope=authors")
    touched = [name for name, p in net.named_parameters() if (p != POISON).any()]
    assert touched == ["stem.0.weight", "stem.0.bias", "fc.weight", "fc.bias"]
    for layer in (net.stem[0], net.fc):
        assert torch.count_nonzero(layer.weight) == 0
        assert (init == "zero") == (torch.count_nonzero(layer.bias) == 0)


def test_the_failure_studys_bias_controls(make_cfg):
    """uniform_symmetric: U[-1, 1) (signs mixed, bounded); half_normal: |N(0, 1)| (all
    positive, normal tails); both scaled like the paper's rules."""
    cfg, net = compose_and_build(make_cfg, "cifar_fnn", "init=bias_uniform")
    for rule, scale in (("uniform_symmetric", 1.0), ("half_normal", 1.0), ("half_normal", 3.0)):
        torch.manual_seed(0)
        InitScheme("zero", rule, scale).apply(net)
        b = pooled_biases(net)
        n = b.numel()
        assert all(torch.count_nonzero(layer.weight) == 0 for _, layer in init_layers(net))
        if rule == "uniform_symmetric":
            assert b.min() >= -1 and b.max() < 1 and abs(b.mean().item()) < 5 / math.sqrt(3 * n)
            assert (b < 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
        else:  # E|N(0, 1)| = sqrt(2 / pi)
            assert b.min() >= 0
            assert b.mean().item() == pytest.approx(scale * math.sqrt(2 / math.pi), rel=0.1)

"""The rounding-vs-padding controls (zeroinit/perturb.py, model.padding_mode) and the border
split of a constant-input conv's gradient (zeroinit/diagnostics/border.py), on the study's
real model (cifar_cnn at 1/4 width) trained through zeroinit.run.run, as train.py runs it."""

import pytest
import torch
from torch import nn

from zeroinit import perturb, rounding_padding
from zeroinit.diagnostics.border import split_terms
from zeroinit.run import build_net, compose, run
from zeroinit.stacked.layers import stack_nets

W4 = ["model=cifar_cnn", "model.stages=[[8,16],[32,32],[64,64]]", "model.hidden=[256,128]"]
AFTER_BN = ("6", "12", "19")  # the conv after BatchNorm 1 and 2, the Linear after BatchNorm 3
STEPS = 8  # natively every one of them has woken by then (docs/findings.md: 3, 5, 7)


def short_run(tmp_path, name, *overrides):
    cfg = compose(
        "experiment=bn_padding",
        "trainer=cpu",
        f"paths.output_dir={tmp_path / name}",
        f"paths.log_dir={tmp_path}",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={STEPS}",
        "batch_size=32",
        *overrides,
    )
    return run(cfg)


def test_exact_batchnorm_without_offset_keeps_the_layer_after_each_batchnorm_at_zero_gradient(
    tmp_path,
):
    """(beta, weights) = (0, 0) is a fixed point once a BatchNorm's constant channel gives
    exactly beta: the layer after it sees input 0, so its weight gradient is exactly 0 at
    every step. Natively the rounding offset wakes the same layers within the 8 steps."""
    native = short_run(tmp_path, "native")["diagnostics"]["wakeup_step"]
    exact = short_run(tmp_path, "exact", "perturb.exact_bn=true")["diagnostics"]["wakeup_step"]
    assert all(native[layer] is not None for layer in AFTER_BN), native
    assert all(exact[layer] is None for layer in AFTER_BN), exact
    assert exact["23"] == 1  # the output layer still learns from its biases' input

    # the study's tables read these runs: one cell each, every run's outcome listed
    rows = rounding_padding.collect(tmp_path)
    assert [(r["bn"], r["padding"], r["precision"]) for r in rows] == [
        ("exact", "zeros", "fp32"),
        ("native", "zeros", "fp32"),
    ]
    table = rounding_padding.cells(rows)
    assert [c["n"] for c in table] == [1, 1] and table[0]["horizon"] == STEPS
    assert table[1]["convs_woken"] == "5/6" and table[0]["convs_woken"] == "0/6"  # conv 0: step 9
    text = rounding_padding.markdown(table)
    assert "| fp32 | 1e-8 | zeros | exact + 0 | 1 |" in text and "| native | 1 |" in text


@pytest.mark.parametrize("padding", ["zeros", "circular"])
def test_an_offset_wakes_convs_through_the_border_with_zero_padding_only(tmp_path, padding):
    """Exact BatchNorm + an offset 1e-8 in float64: the conv after BatchNorm 2 sees a
    constant input. Its border term is non-zero with zero padding and exactly zero with
    circular padding (a constant input stays constant at the borders)."""
    results = short_run(
        tmp_path,
        padding,
        "perturb.exact_bn=true",
        "perturb.bn_offset=1e-8",
        f"model.padding_mode={padding}",
        "trainer.precision=64-true",
    )
    conv = results["border_split"]["layers"]["12"]
    assert conv["constant_steps"] >= 3, conv
    if padding == "zeros":
        assert conv["border_first_nonzero"] is not None and conv["border_max"] > 0, conv
    else:
        assert conv["border_first_nonzero"] is None and conv["border_max"] == 0.0, conv
    assert results["border_split"]["layers"]["0"]["constant_steps"] == 0  # images vary


@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_border_and_interior_terms_add_up_to_the_weight_gradient(mode):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, padding_mode=mode, groups=2).double()
    c = torch.randn(4, dtype=torch.float64)
    x = c.view(1, 4, 1, 1).expand(5, 4, 7, 7).clone()
    y = conv(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    border, interior = split_terms(conv, x, c, gy)
    torch.testing.assert_close(border + interior, conv.weight.grad, rtol=0, atol=1e-12)
    assert (border.abs().max() > 0) == (mode == "zeros")


def test_offsets_are_drawn_from_the_seed_and_a_stack_carries_the_hooks(tmp_path):
    """bn_offset adds +-eps per channel (the signs from the run's seed, the same in a stack
    member); exact_bn's hook also acts in the stacked net: its BatchNorms output beta."""
    data = type("Shape", (), {"input_shape": (1, 28, 28), "num_classes": 10})()
    cfgs = [
        compose(
            *W4,
            "init=bias_normal",
            "perturb.exact_bn=true",
            "perturb.bn_offset=1e-5",
            f"seed={s}",
            f"paths.output_dir={tmp_path / str(s)}",
        )
        for s in (0, 1, 0)
    ]
    nets = [build_net(cfg, data) for cfg in cfgs]
    betas = [net[5].bias.detach() for net in nets]
    assert torch.equal(betas[0].abs(), torch.full_like(betas[0], 1e-5))
    assert torch.equal(betas[0], betas[2]) and not torch.equal(betas[0], betas[1])
    assert (betas[0] > 0).any() and (betas[0] < 0).any()

    stacked = perturb.of(cfgs[0]).attach(stack_nets(nets[:2])).train()
    seen = []
    stacked[5].register_forward_hook(lambda m, i, out: seen.append(out))
    stacked(torch.rand(2, 4, 1, 28, 28))
    want = torch.stack(betas[:2])[:, None, :, None, None].expand_as(seen[0])
    assert torch.equal(seen[0], want)


def test_the_noise_arm_makes_a_constant_channel_vary_in_training_only(tmp_path):
    """bn_noise adds independent noise to every BatchNorm output in training mode: a channel
    that exact BatchNorm would hold at beta now differs between positions (which rounding
    never does, hence a separate arm); the test pass (eval mode) is left alone."""
    data = type("Shape", (), {"input_shape": (1, 28, 28), "num_classes": 10})()
    cfg = compose(
        *W4,
        "init=bias_normal",
        "perturb.exact_bn=true",
        "perturb.bn_noise=1e-3",
        f"paths.output_dir={tmp_path}",
    )
    net = build_net(cfg, data)
    seen = []
    net[5].register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    net.train()(torch.rand(4, 1, 28, 28))
    out = seen[-1]
    assert 0 < out.std() < 1e-2 and (out.amax((0, 2, 3)) > out.amin((0, 2, 3))).all()
    net.eval()(torch.rand(4, 1, 28, 28))
    assert torch.equal(seen[-1].amax((0, 2, 3)), seen[-1].amin((0, 2, 3)))  # no noise in eval

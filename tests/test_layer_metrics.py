"""layer_metrics: the symmetry metrics, probe metrics and gradient statistics, on matrices
and nets whose answers are known."""

import pytest
import torch
from torch import nn

from zeroinit.layer_metrics import distinct_units, gradient_stats, probe_metrics, weight_metrics


def test_weight_metrics_on_known_matrices():
    eye = weight_metrics(torch.eye(6))
    assert eye == {"effective_rank": pytest.approx(6.0), "numerical_rank": 6, "distinct_units": 6}
    zero = weight_metrics(torch.zeros(5, 7))
    assert zero == {"effective_rank": 0.0, "numerical_rank": 0, "distinct_units": 1}
    # Rank 1 in float32, as zero init makes them: float64 Gram keeps round-off from
    # inflating the effective rank (a float32 one gives 1.17 here).
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(500, generator=g), torch.randn(784, generator=g)
    rank1 = weight_metrics(torch.outer(u, v))
    assert rank1["numerical_rank"] == 1 and rank1["distinct_units"] == 1  # +-v: one direction
    assert rank1["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    nan = weight_metrics(torch.full((3, 3), float("nan")))
    assert nan == {"effective_rank": None, "numerical_rank": None, "distinct_units": None}


def test_conv_weight_is_out_by_fan_in():
    conv = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    assert weight_metrics(conv) == weight_metrics(conv.reshape(4, 18))


def test_distinct_units_groups_directions_and_zero_rows():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, -1.0, 0.5])
    rows = torch.stack([a, 2 * a, -a, b, torch.zeros(3), 1e-9 * b, b + 1e-5])
    # {a, 2a, -a}, {b, b+1e-5}, {0, 1e-9 b}: near-zero rows have no direction, one class
    assert distinct_units(rows.double()) == 3
    assert distinct_units(torch.zeros(4, 3)) == 1


def test_probe_metrics_dead_units_and_no_side_effects():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.copy_(torch.tensor([-1.0, 2.0, -3.0, 4.0]))  # ReLU' = 0 for units 0, 2
    net.train()
    net[3].eval()  # a module's own mode must survive the probe
    before = net[3].running_mean.clone()
    names = {net[0]: "0", net[2]: "2"}
    out = probe_metrics(net, names, torch.randn(8, 3))
    assert out == {"0": {"neg_preact_frac": 0.5, "dead_units_frac": 0.5}}  # "2": no activation
    assert net.training and not net[3].training
    assert torch.equal(net[3].running_mean, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


def test_gradient_stats_histograms_and_sleeping_layers():
    live, asleep, missing = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2, bias=False)
    live.weight.grad = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    live.bias.grad = torch.tensor([3.0, 4.0])
    asleep.weight.grad = torch.zeros(2, 3)
    asleep.bias.grad = torch.zeros(2)
    s_live, s_asleep, s_missing = gradient_stats([live, asleep, missing], bins=4)
    assert s_live["counts"] == [2, 1, 1, 2] and s_live["edges"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert s_live["norm"] == pytest.approx(30**0.5) and s_live["bias_norm"] == 5.0
    assert s_live["nonzero_frac"] == pytest.approx(4 / 6) and s_live["numel"] == 6
    assert (s_live["sum"], s_live["sum_squares"]) == (10.0, 30.0)
    # an all-zero gradient (a sleeping layer) is one zero-width bin holding every entry
    assert s_asleep["edges"] == [0.0, 0.0] and s_asleep["counts"] == [6]
    assert s_asleep["nonzero_frac"] == 0.0
    # no gradient at all counts as zero; no bias gives a NaN bias norm
    assert s_missing["counts"] == [6] and s_missing["bias_norm"] != s_missing["bias_norm"]


def test_gradient_stats_keep_float64_gradients_below_float32s_range():
    layer = nn.Linear(2, 1).double()
    layer.weight.grad = torch.tensor([[3e-60, 4e-60]], dtype=torch.float64)
    layer.bias.grad = torch.tensor([1e-70], dtype=torch.float64)
    (s,) = gradient_stats([layer], bins=4)
    assert s["norm"] == pytest.approx(5e-60) and s["bias_norm"] == pytest.approx(1e-70)
    assert s["nonzero_frac"] == 1.0

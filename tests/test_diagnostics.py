"""Diagnostics: wake-up order, symmetry metrics, results.json layout, Figure 12.

Runs go through train.run with the real configs on the embedded digits, a few batches each.
"""
import json
import math

import lightning as L
import pytest
import torch
from torch import nn

import report
from zeroinit.run import run
from zeroinit.diagnostics import (METRICS, Diagnostics, distinct_units, plot_gradient_flow,
                                  probe_metrics, summary_columns, weight_metrics)
from zeroinit.results import read_results, write_json_atomic

FNN4 = ["model=mnist_fnn", "model.hidden=[32,32,32]"]  # 4 Linear layers
SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=8"]


def layer_values(diag, mapping):
    """Values of a {layer name: value} mapping, input to output."""
    return [mapping[layer["name"]] for layer in diag["layers"]]


# ---------------------------------------------------------------- metric definitions

def test_weight_metrics_on_known_matrices():
    eye = weight_metrics(torch.eye(6))
    assert eye == {"effective_rank": pytest.approx(6.0), "numerical_rank": 6,
                   "distinct_units": 6}
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


# ---------------------------------------------------------------- through train.run

def test_zero_weights_random_biases_wake_from_the_output_back(make_cfg, tmp_path):
    results = run(make_cfg(*FNN4, *SHORT, "init=bias_normal"))
    diag = results["diagnostics"]
    assert layer_values(diag, diag["wakeup_step"]) == [4, 3, 2, 1]  # input -> output
    assert diag["wakeup_watched_steps"] == 4  # stops watching once every layer woke
    # The gradient histograms say the same: layer i's gradient is all zero before it wakes.
    first = diag["first_steps"]
    assert first["step"] == [1, 2, 3, 4, 5]
    for layer, wake in zip(diag["layers"], [4, 3, 2, 1]):
        entry = first["layers"][layer["name"]]
        numel = layer["units"] * layer["fan_in"]
        for step, nonzero, edges, counts in zip(first["step"], entry["grad_nonzero_frac"],
                                                entry["hist_edges"], entry["hist_counts"]):
            assert (nonzero > 0) == (step >= wake)
            assert sum(counts) == numel and len(edges) == len(counts) + 1
            if step < wake:
                assert edges == [0.0, 0.0] and entry["weight_change"][step - 1] == 0.0
    # results.json on disk holds the same record
    assert read_results(tmp_path)["diagnostics"] == json.loads(json.dumps(diag))


def test_pytorch_init_wakes_every_layer_at_step_1(make_cfg):
    diag = run(make_cfg(*FNN4, *SHORT, "init=pytorch"))["diagnostics"]
    assert layer_values(diag, diag["wakeup_step"]) == [1, 1, 1, 1]
    assert diag["wakeup_watched_steps"] == 1


def test_all_zero_init_keeps_one_distinct_unit_per_layer(make_cfg):
    diag = run(make_cfg(*FNN4, "init=zero", "trainer.max_epochs=2",
                        "+trainer.limit_train_batches=8"))["diagnostics"]
    history = diag["symmetry"]["history"]
    assert history["step"] == [0, 1, 2, 4, 8, 16] and history["epoch"] == [None] * 4 + [1, 2]
    for layer in diag["layers"]:
        values = history["layers"][layer["name"]]
        assert values["distinct_units"] == [1] * 6  # at init and after every measurement
        assert values["numerical_rank"] == [0] * 6  # the weights never leave zero
        assert diag["symmetry"]["final"][layer["name"]]["distinct_units"] == 1
    assert set(diag["wakeup_step"].values()) == {None}  # no weight gradient, ever
    assert diag["wakeup_watched_steps"] == 16


def test_pytorch_init_keeps_full_rank(make_cfg):
    # Layer shapes 64x784, 32x64, 16x32, 10x16: aspect ratios q = min/max <= 0.63. For an
    # i.i.d. random matrix s_min/s_max ~ (1 - sqrt(q)) / (1 + sqrt(q)) >= 0.11 (Marchenko-
    # Pastur), ten times the 1% cut, so numerical rank = min(out, fan_in) exactly, at init and
    # after 64 Adam steps. (Square layers would not do: their smallest singular value is
    # near 0, and a 32x32 one falls below 1% about half the time.)
    diag = run(make_cfg("model=mnist_fnn", "model.hidden=[64,32,16]", "init=pytorch",
                        "trainer.max_epochs=2"))["diagnostics"]
    history = diag["symmetry"]["history"]
    assert history["epoch"][-2:] == [1, 2] and len(history["step"]) >= 8
    for layer in diag["layers"]:
        full = min(layer["units"], layer["fan_in"])
        values = history["layers"][layer["name"]]
        assert values["numerical_rank"] == [full] * len(history["step"]), layer
        assert values["distinct_units"] == [layer["units"]] * len(history["step"]), layer
        assert min(values["effective_rank"]) > 0.8 * full, layer


class EpochEndSpy(L.Callback):
    """Reads results.json at each epoch end, after the diagnostics callback ran."""
    seen = []

    def __init__(self, path):
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module):
        with open(self.path) as f:
            EpochEndSpy.seen.append(json.load(f))


def test_each_epochs_results_json_carries_that_epochs_symmetry(make_cfg, tmp_path):
    EpochEndSpy.seen = []
    run(make_cfg(*FNN4, "init=bias_normal", "trainer.max_epochs=2",
                 "+trainer.limit_train_batches=3",
                 "+callbacks.spy._target_=test_diagnostics.EpochEndSpy",
                 f"+callbacks.spy.path={tmp_path / 'results.json'}"))
    for epoch, results in enumerate(EpochEndSpy.seen, 1):
        history = results["diagnostics"]["symmetry"]["history"]
        assert results["epochs"][-1]["epoch"] == epoch and history["epoch"][-1] == epoch
        assert results["diagnostics"]["symmetry"]["final"] == {
            name: {k: v[-1] for k, v in values.items()}
            for name, values in history["layers"].items()}
    assert len(EpochEndSpy.seen) == 2


def test_epochs_without_validation_are_measured_at_train_epoch_end():
    from zeroinit.data import ImageDataModule
    from zeroinit.models import FNN
    from zeroinit.module import Classifier

    data = ImageDataModule("mnist5k", batch_size=128).load()
    net = FNN(data.input_shape, data.num_classes, hidden=[16])
    module = Classifier(net, data.num_classes, optimizer=lambda p: torch.optim.Adam(p))
    diagnostics = Diagnostics()
    L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=0, accelerator="cpu",
              logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[diagnostics]).fit(module, datamodule=data)
    history = diagnostics.record["symmetry"]["history"]
    assert history["step"] == [0, 1, 2, 3, 4, 6] and history["epoch"] == [None] * 3 + [1, None, 2]
    assert diagnostics.record["symmetry"]["final"]["1"]["distinct_units"] == 16


def test_switched_off_and_training_unchanged(make_cfg, tmp_path):
    on = run(make_cfg(*FNN4, *SHORT, "init=bias_normal"))
    off = run(make_cfg(*FNN4, *SHORT, "init=bias_normal", "callbacks.diagnostics=null"))
    disabled = run(make_cfg(*FNN4, *SHORT, "init=bias_normal",
                            "callbacks.diagnostics.enabled=false"))
    assert "diagnostics" in on and "diagnostics" not in off and "diagnostics" not in disabled
    strip = lambda r: [{k: v for k, v in e.items() if k != "epoch_time_s"}  # noqa: E731
                       for e in r["epochs"]]
    assert strip(on) == strip(off) == strip(disabled)  # probes never touch the training


def test_conv_layers_and_skipped_layers_are_recorded(make_cfg):
    diag = run(make_cfg("model=mnist_cnn", "model.stages=[[4,8]]", "init=bias_normal",
                        "trainer.max_epochs=1", "+trainer.limit_train_batches=4",
                        "callbacks.diagnostics.max_numel=10000"))["diagnostics"]
    layers = diag["layers"]
    assert [(lay["type"], lay["units"], lay["fan_in"]) for lay in layers] == [
        ("Conv2d", 4, 1 * 5 * 5), ("Conv2d", 8, 4 * 5 * 5), ("Linear", 10, 8 * 28 * 28)]
    assert layer_values(diag, diag["wakeup_step"]) == [3, 2, 1]
    final = diag["symmetry"]["final"]
    conv, linear = layers[0]["name"], layers[2]["name"]
    assert list(diag["symmetry"]["skipped"]) == [linear]  # 62,720 > 10,000 entries
    assert final[linear]["effective_rank"] is None and final[conv]["effective_rank"] is not None
    assert final[conv]["dead_units_frac"] is not None and final[linear]["dead_units_frac"] is None


# ---------------------------------------------------------------- report side

@pytest.fixture
def two_runs(make_cfg, tmp_path):
    dirs = {}
    for init in ("pytorch", "bias_normal"):
        out = tmp_path / init
        run(make_cfg(*FNN4, *SHORT, f"init={init}", f"paths.output_dir={out}"))
        dirs[init] = out
    return dirs


def test_summary_plot_and_fig12_cli(two_runs, tmp_path):
    results = {init: read_results(d) for init, d in two_runs.items()}
    cols = summary_columns(results["bias_normal"])
    assert cols["wakeup_all"] == 4.0 and summary_columns(results["pytorch"])["wakeup_all"] == 1.0
    assert set(cols) == {"wakeup_all", "erank_mean", "erank_first", "nrank_frac_min",
                         "distinct_frac_min", "dead_frac_mean"}
    assert summary_columns(results["pytorch"])["distinct_frac_min"] == 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in cols.values())
    assert math.isnan(summary_columns({"status": "completed"})["erank_mean"])
    png = plot_gradient_flow(results, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # report.py draws Figure 12 for a fig12 sweep, pytorch beside bias_normal
    for d in two_runs.values():
        r = read_results(d)
        r["config"]["sweep_name"] = "fig12_gradient_flow"
        write_json_atomic(d / "results.json", r)
    assert report.main([str(tmp_path), "-o", str(tmp_path / "rep")]) == 0
    (png,) = (tmp_path / "rep").glob("fig12_gradient_flow-*-gradient_flow.png")
    assert png.stat().st_size > 10_000
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "bias_normal: wake-up step per layer, input to output: [4, 3, 2, 1]" in text
    assert "pytorch: wake-up step per layer, input to output: [1, 1, 1, 1]" in text


def test_fig12_experiment_composes_offline(make_cfg):
    cfg = make_cfg("experiment=fig12_gradient_flow", "dataset=mnist5k")
    assert (cfg.model.name, cfg.dataset.name, cfg.sweep_name) == (
        "cifar_fnn", "mnist5k", "fig12_gradient_flow")
    assert cfg.callbacks.diagnostics.steps == 5
    assert set(METRICS) >= {"effective_rank", "distinct_units"}


@pytest.mark.slow
def test_fig12_sweep_end_to_end(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "src/train.py", "-m", "experiment=fig12_gradient_flow",
                    "dataset=mnist5k", "trainer=cpu", f"paths.log_dir={tmp_path}",
                    "trainer.max_epochs=1", "+trainer.limit_train_batches=6"],
                   cwd=root, check=True, capture_output=True)
    sweep = tmp_path / "sweeps" / "fig12_gradient_flow"
    assert report.main([str(sweep), "-o", str(tmp_path / "rep")]) == 0
    assert list((tmp_path / "rep").glob("*-gradient_flow.png"))
    inits = sorted(read_results(p.parent)["config"]["init"]["name"]
                   for p in sweep.rglob("results.json"))
    assert inits == ["bias_normal", "pytorch"]

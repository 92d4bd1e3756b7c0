"""The Diagnostics callback: wake-up order, when symmetry is measured, results.json layout,
TensorBoard tags. Runs go through zeroinit.run with the real configs on the embedded digits, a
few batches each.
"""

import json

import lightning as L
import torch

from zeroinit.diagnostics import Diagnostics, measurement_steps
from zeroinit.diagnostics.record import new_record
from zeroinit.results import read_results
from zeroinit.run import run

FNN4 = ["model=mnist_fnn", "model.hidden=[32,32,32]"]  # 4 Linear layers
SHORT = ["trainer.max_epochs=1", "+trainer.limit_train_batches=8"]
# 6 symmetry measurements however short the run (the default spaces them 100 steps apart)
DENSE = ["callbacks.diagnostics.symmetry_points=6", "callbacks.diagnostics.symmetry_min_gap=1"]


def layer_values(diag, mapping):
    """Values of a {layer name: value} mapping, input to output."""
    return [mapping[layer["name"]] for layer in diag["layers"]]


def test_measurement_steps_spread_over_the_run():
    assert measurement_steps(320, 12, 100) == [1, 18, 320]  # the default run: 3 (100 apart)
    assert measurement_steps(4690, 12, 100) == [
        1,
        2,
        5,
        10,
        22,
        47,
        101,
        217,
        468,
        1009,
        2175,
        4690,
    ]  # a paper run: all 12
    assert measurement_steps(320, 6) == [1, 3, 10, 32, 101, 320]
    assert measurement_steps(6, 6) == [1, 2, 3, 4, 6]  # collisions merge
    assert measurement_steps(50, 12, 100) == [50]  # always the final step
    assert measurement_steps(50, 1) == [50] and measurement_steps(50, 0) == []
    assert measurement_steps(float("inf"), 6)[:4] == [1, 2, 4, 8]  # a run without a step count


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
        for step, nonzero, edges, counts in zip(
            first["step"], entry["grad_nonzero_frac"], entry["hist_edges"], entry["hist_counts"]
        ):
            assert (nonzero > 0) == (step >= wake)
            assert sum(counts) == numel and len(edges) == len(counts) + 1
            if step < wake:
                assert edges == [0.0, 0.0] and entry["weight_change"][step - 1] == 0.0
    # results.json on disk holds the same record
    assert read_results(tmp_path)["diagnostics"] == json.loads(json.dumps(diag))


def test_wakeups_between_the_hosts_reads_are_recorded_as_if_read_every_step(make_cfg, tmp_path):
    """The wake-up flags stay on the device and the host reads them at steps 1, 2, 4, 8, ...:
    layers waking at 5, 6 and 7 (none of them a read) still get those steps, in results.json
    and in every logger, and the steps watched end where the last layer woke."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fnn7 = ["model=mnist_fnn", "model.hidden=[16,16,16,16,16,16]"]  # 7 Linear layers
    results = run(
        make_cfg(
            *fnn7, "trainer.max_epochs=1", "+trainer.limit_train_batches=12", "init=bias_normal"
        )
    )
    diag = results["diagnostics"]
    assert layer_values(diag, diag["wakeup_step"]) == [7, 6, 5, 4, 3, 2, 1]
    assert diag["wakeup_watched_steps"] == 7
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0}).Reload()
    first = "01_1_Linear_16x784"
    assert [(e.step, e.value) for e in events.Scalars(f"wakeup_step/{first}")] == [(7, 7.0)]
    short = run(
        make_cfg(
            *fnn7,
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=6",
            "init=bias_normal",
            f"paths.output_dir={tmp_path / 'short'}",
        )
    )["diagnostics"]
    assert layer_values(short, short["wakeup_step"]) == [None, 6, 5, 4, 3, 2, 1]
    assert short["wakeup_watched_steps"] == 6  # the run's last step: read at its end


def test_pytorch_init_wakes_every_layer_at_step_1(make_cfg):
    diag = run(make_cfg(*FNN4, *SHORT, "init=pytorch"))["diagnostics"]
    assert layer_values(diag, diag["wakeup_step"]) == [1, 1, 1, 1]
    assert diag["wakeup_watched_steps"] == 1


def test_all_zero_init_keeps_one_distinct_unit_per_layer(make_cfg):
    diag = run(
        make_cfg(
            *FNN4, *DENSE, "init=zero", "trainer.max_epochs=2", "+trainer.limit_train_batches=8"
        )
    )["diagnostics"]
    history = diag["symmetry"]["history"]
    # 16 steps, 6 measurements spread over them (epoch 1 ends at step 8: not one of them)
    assert history["step"] == [0, 1, 2, 3, 5, 9, 16] and history["epoch"] == [None] * 6 + [2]
    for layer in diag["layers"]:
        values = history["layers"][layer["name"]]
        assert values["distinct_units"] == [1] * 7  # at init and after every measurement
        assert values["numerical_rank"] == [0] * 7  # the weights never leave zero
        assert diag["symmetry"]["final"][layer["name"]]["distinct_units"] == 1
    assert set(diag["wakeup_step"].values()) == {None}  # no weight gradient, ever
    assert diag["wakeup_watched_steps"] == 16


def test_pytorch_init_keeps_full_rank(make_cfg):
    # Layer shapes 64x784, 32x64, 16x32, 10x16: aspect ratios q = min/max <= 0.63. For an
    # i.i.d. random matrix s_min/s_max ~ (1 - sqrt(q)) / (1 + sqrt(q)) >= 0.11 (Marchenko-
    # Pastur), ten times the 1% cut, so numerical rank = min(out, fan_in) exactly, at init and
    # after 64 Adam steps. (Square layers would not do: their smallest singular value is
    # near 0, and a 32x32 one falls below 1% about half the time.)
    diag = run(
        make_cfg(
            "model=mnist_fnn",
            "model.hidden=[64,32,16]",
            "init=pytorch",
            *DENSE,
            "trainer.max_epochs=2",
        )
    )["diagnostics"]
    history = diag["symmetry"]["history"]
    assert history["epoch"][-1] == 2 and len(history["step"]) == 7
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
    # 2 epochs of 3 steps: measured at steps 0, 1, 2, 3, 4, 6; 3 and 6 end epochs 1 and 2
    EpochEndSpy.seen = []
    run(
        make_cfg(
            *FNN4,
            *DENSE,
            "init=bias_normal",
            "trainer.max_epochs=2",
            "+trainer.limit_train_batches=3",
            "+callbacks.spy._target_=test_diagnostics.EpochEndSpy",
            f"+callbacks.spy.path={tmp_path / 'results.json'}",
        )
    )
    for epoch, results in enumerate(EpochEndSpy.seen, 1):
        history = results["diagnostics"]["symmetry"]["history"]
        assert results["epochs"][-1]["epoch"] == epoch and history["epoch"][-1] == epoch
        assert results["diagnostics"]["symmetry"]["final"] == {
            name: {k: v[-1] for k, v in values.items()}
            for name, values in history["layers"].items()
        }
    assert len(EpochEndSpy.seen) == 2


def test_measured_without_validation_too():
    from zeroinit.data import ImageDataModule
    from zeroinit.models import FNN
    from zeroinit.module import Classifier

    data = ImageDataModule("mnist5k", batch_size=128).load()
    net = FNN(data.input_shape, data.num_classes, hidden=[16])
    module = Classifier(net, data.num_classes, optimizer=lambda p: torch.optim.Adam(p))
    diagnostics = Diagnostics(symmetry_points=6, symmetry_min_gap=1)
    L.Trainer(
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[diagnostics],
    ).fit(module, datamodule=data)
    history = diagnostics.record["symmetry"]["history"]
    assert history["step"] == [0, 1, 2, 3, 4, 6] and history["epoch"] == [None] * 3 + [1, None, 2]
    assert diagnostics.record["symmetry"]["final"]["1"]["distinct_units"] == 16


def test_tensorboard_tags_name_layers_and_steps(make_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(make_cfg(*FNN4, *SHORT, *DENSE, "init=bias_normal"))
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    tags = events.Reload().Tags()
    first, last = "01_1_Linear_32x784", "04_7_Linear_10x32"  # position, module, type, shape
    assert {
        f"weight_gradients/norm/{first}",
        f"weight_change/{last}",
        f"weight_symmetry/effective_rank/{first}",
        f"wakeup_step/{last}",
        "test/acc",
    } <= set(tags["scalars"])
    assert f"weight_gradients/{first}" in tags["histograms"]
    steps = [e.step for e in events.Scalars(f"weight_symmetry/effective_rank/{first}")]
    assert steps == [0, 1, 2, 3, 5, 8]  # optimizer steps, not epochs


def test_switched_off_and_training_unchanged(make_cfg, tmp_path):
    on = run(make_cfg(*FNN4, *SHORT, "init=bias_normal"))
    off = run(make_cfg(*FNN4, *SHORT, "init=bias_normal", "callbacks.diagnostics=null"))
    disabled = run(
        make_cfg(*FNN4, *SHORT, "init=bias_normal", "callbacks.diagnostics.enabled=false")
    )
    assert "diagnostics" in on and "diagnostics" not in off and "diagnostics" not in disabled

    def strip(r):
        return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in r["epochs"]]

    assert strip(on) == strip(off) == strip(disabled)  # probes never touch the training


def test_conv_layers_and_skipped_layers_are_recorded(make_cfg):
    diag = run(
        make_cfg(
            "model=mnist_cnn",
            "model.stages=[[4,8]]",
            "init=bias_normal",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=4",
            "callbacks.diagnostics.max_numel=10000",
        )
    )["diagnostics"]
    layers = diag["layers"]
    assert [(lay["type"], lay["units"], lay["fan_in"]) for lay in layers] == [
        ("Conv2d", 4, 1 * 5 * 5),
        ("Conv2d", 8, 4 * 5 * 5),
        ("Linear", 10, 8 * 28 * 28),
    ]
    assert layer_values(diag, diag["wakeup_step"]) == [3, 2, 1]
    final = diag["symmetry"]["final"]
    conv, linear = layers[0]["name"], layers[2]["name"]
    assert list(diag["symmetry"]["skipped"]) == [linear]  # 62,720 > 10,000 entries
    assert final[linear]["effective_rank"] is None and final[conv]["effective_rank"] is not None
    assert final[conv]["dead_units_frac"] is not None and final[linear]["dead_units_frac"] is None


def test_a_rounding_sized_gradient_wakes_its_layer():
    """The study's gradients can be 1e-30 in float32: a layer with one such entry has woken
    (its square would underflow to 0; the check must not)."""
    from types import SimpleNamespace

    diag = Diagnostics()
    diag.layers = [(n, torch.nn.Linear(3, 2)) for n in ("a", "b", "c")]
    diag.labels = {n: n for n, _ in diag.layers}
    diag.record = new_record(diag._settings(), diag.layers, {})
    for (_, m), g in zip(diag.layers, (1e-30, 0.0, float("nan"))):
        m.weight.grad = torch.zeros(2, 3)
        m.weight.grad[1, 2] = g
    diag._watch(SimpleNamespace(loggers=[]), step=1)  # step 1: read at once
    assert diag.record["wakeup_step"] == {"a": 1, "b": None, "c": 1}

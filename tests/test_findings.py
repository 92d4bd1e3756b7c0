"""The BatchNorm study's own parts: its runs compose, BatchNorm outputs are measured, the
diagnostics of a run are summarized (zeroinit/findings.py)."""

import torch
from torch import nn

from zeroinit.config import build
from zeroinit.findings import (
    CONDITIONS,
    MODELS,
    batchnorm_outputs,
    first_steps,
    overrides,
    rounding_report,
    rounding_runs,
    runs_of,
)
from zeroinit.init import InitScheme


def test_study_runs_compose_with_their_options(make_cfg):
    """One run per model (composing all ~20 takes ~20 s on 2 busy cores)."""
    for model, condition in [
        ("cifar_cnn_w4", "fp32_adam_eps1e-3"),
        ("mnist_fnn", "fp32_sgd"),
        ("resnet50_w16", "fp32_adam_no_bn"),
    ]:
        assert condition in runs_of(model)
        cfg = make_cfg(*overrides(model, condition, 3))
        assert cfg.seed == 3 and cfg.sweep_name == "bn_study" and cfg.batch_size == 32
        assert cfg.callbacks.diagnostics.steps == 10 and build(cfg.init).bias == "normal"
    assert cfg.model.batchnorm is False and list(cfg.model.widths) == [4, 8, 16, 32]
    assert "fp32_adam_no_bn" not in runs_of("mnist_fnn")  # no BatchNorm to remove
    assert set(CONDITIONS) >= {"fp32_adam", "fp64_adam", "fp32_adam_eps1e-3", "fp32_sgd"}
    assert set(MODELS) == {"cifar_cnn_w4", "resnet50_w16", "mnist_fnn"}


def test_batchnorm_behind_a_zero_weight_conv_outputs_about_zero():
    """A zero-weight conv with random biases gives a constant channel; BatchNorm maps it to
    its beta (0) up to rounding. Measured by forward hooks, per BatchNorm."""
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ELU(), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3), nn.BatchNorm2d(2)
    )
    x = torch.rand(8, 1, 10, 10)
    InitScheme("zero", "normal").apply(net)
    out = batchnorm_outputs(net, x)
    assert list(out) == ["2", "4"] and max(out.values()) < 1e-2
    InitScheme("pytorch", "pytorch").apply(net)
    assert max(batchnorm_outputs(net, x).values()) > 0.5  # a real input: unit variance


def test_first_steps_summary_reads_wakeup_and_weight_change():
    results = {
        "diagnostics": {
            "layers": [{"name": "0"}, {"name": "2"}],
            "wakeup_step": {"0": None, "2": 1},
            "wakeup_watched_steps": 60,
            "first_steps": {
                "step": [1, 2],
                "layers": {
                    "0": {"weight_change": [0.0, 0.0], "grad_norm": [0.0, 0.0]},
                    "2": {"weight_change": [1e-3, 2e-2], "grad_norm": [1.0, 3e-10]},
                },
            },
        }
    }
    f = first_steps(results)
    assert (f["woke"], f["moved"], f["steps"], f["watched"]) == (1, 1, 2, 60)
    assert f["wake"] == {"0": None, "2": 1} and f["change"] == {"0": 0.0, "2": 2e-2}
    assert f["grad"] == {"0": 0.0, "2": 3e-10}


def test_the_accuracy_part_is_one_stacked_sweep_per_model_and_condition(make_cfg):
    from zeroinit.findings import accuracy_commands

    commands = accuracy_commands(5, ["cifar_cnn_w4", "mnist_fnn"], "/tmp/x")
    assert len(commands) == len(runs_of("cifar_cnn_w4")) + len(runs_of("mnist_fnn"))
    command = commands[1]  # cifar_cnn_w4, fp64_adam
    assert command[0] == "-m" and "seed=0,1,2,3,4" in command and "launcher=stacked" in command
    assert "hydra.sweep.subdir=cifar_cnn_w4-fp64_adam-s${seed}" in command
    kept = [a for a in command[1:] if not a.startswith(("seed=", "hydra.", "launcher="))]
    cfg = make_cfg(*kept, "seed=4")  # one of its runs, as the sweep composes it
    assert cfg.sweep_name == "bn_accuracy" and cfg.batch_size == 128
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.precision == "64-true"
    assert "limit_train_batches" not in cfg.trainer  # whole epochs, unlike bn_study's 60 steps


def test_the_rounding_part_runs_full_width_resnet50_per_precision(make_cfg):
    cpu = rounding_runs(3, "cpu")
    assert [name for name, _ in cpu][::3] == ["resnet50-fp32-cpu-s0", "resnet50-fp64-cpu-s0"]
    assert len(cpu) == 6 and len(rounding_runs(3, "gpu")) == 12  # tf32, bf16: GPU only
    name, args = rounding_runs(3, "gpu", ["bf16"])[2]
    cfg = make_cfg(*[a for a in args if a != "trainer=gpu"])  # composes without a GPU here
    assert name == "resnet50-bf16-gpu-s2" and "trainer=gpu" in args and cfg.seed == 2
    assert list(cfg.model.widths) == [64, 128, 256, 512] and build(cfg.init).bias == "normal"
    assert cfg.dataset.source == "random_cifar10" and cfg.trainer.precision == "bf16-mixed"
    assert cfg.batch_size == 32 and cfg.trainer.limit_train_batches == 60


def _wakeup_results(wake: dict, change: dict) -> dict:
    layers = list(wake)
    return {
        "status": "completed",
        "device": "cpu: test",
        "diagnostics": {
            "layers": [{"name": n} for n in layers],
            "wakeup_step": wake,
            "wakeup_watched_steps": 60,
            "first_steps": {
                "step": list(range(1, 11)),
                "layers": {n: {"weight_change": [change[n]], "grad_norm": [0.0]} for n in layers},
            },
        },
    }


def test_rounding_report_counts_layers_woken_by_step_10_and_60(tmp_path):
    from zeroinit.findings import rounding_name
    from zeroinit.results import write_json_atomic

    for seed, late in enumerate([12, None]):  # a layer woken after step 10, or never
        run = tmp_path / rounding_name("fp64", "cpu", seed)
        run.mkdir()
        wake = {"a": 1, "b": 10, "c": late}
        write_json_atomic(run / "results.json", _wakeup_results(wake, {"a": 0.5, "b": 0, "c": 0}))
    (tmp_path / rounding_name("fp64", "cpu", 2)).mkdir()  # claimed, never started: left out
    for seed, steps in ((0, 10), (1, 4)):  # stopped after step 10 (counts), after step 4 (not)
        run = tmp_path / rounding_name("fp32", "cpu", seed)
        run.mkdir()
        stopped = _wakeup_results({"a": 1, "b": None, "c": None}, {"a": 0.5, "b": 0, "c": 0})
        stopped["status"], stopped["diagnostics"]["wakeup_watched_steps"] = "interrupted", 27
        stopped["diagnostics"]["first_steps"]["step"] = list(range(1, steps + 1))
        write_json_atomic(run / "results.json", stopped)
    table = rounding_report(tmp_path)
    (fp32,) = [line for line in table.splitlines() if line.startswith("| cpu | fp32")]
    assert "| cpu | fp32 | 1 |" in fp32 and "1.0 / 3 (27) |" in fp32
    (row,) = [line for line in table.splitlines() if line.startswith("| cpu | fp64")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["cpu", "fp64", "2"]
    assert cells[3] == "2.0 ± 0.0 / 3"  # woken by step 10: a, b in both seeds
    assert cells[4] == "1.0 ± 0.0 / 3"  # moved: a only
    assert cells[5].startswith("2.5 ± ") and cells[5].endswith(" / 3 (60, 60)")  # 3 and 2
    assert "| gpu" not in table  # nothing run there

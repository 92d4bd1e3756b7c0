"""The BatchNorm study's own parts: its runs compose, BatchNorm outputs are measured, the
diagnostics of a run are summarized (zeroinit/findings.py)."""

import torch
from torch import nn

from zeroinit.config import build
from zeroinit.findings import CONDITIONS, MODELS, batchnorm_outputs, first_steps, overrides, runs_of
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

"""The LightningModule's optimizer, built from conf/optimizer as train.py builds it."""

import pytest
import torch

from zeroinit.config import build
from zeroinit.module import Classifier


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([], {"lr": 1e-3, "eps": 1e-8, "betas": (0.9, 0.999)}),  # the paper's Adam
        (
            ["optimizer.eps=1e-3", "optimizer.betas=[0.8,0.99]", "optimizer.lr=3e-4"],
            {"lr": 3e-4, "eps": 1e-3, "betas": (0.8, 0.99)},
        ),
        (
            ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.lr=0.1"],
            {"lr": 0.1, "momentum": 0.9},
        ),
    ],
)
def test_optimizer_arguments_from_the_command_line(make_cfg, overrides, expected):
    cfg = make_cfg(*overrides)
    module = Classifier(torch.nn.Linear(3, 2), 2, optimizer=build(cfg.optimizer))
    group = module.configure_optimizers().param_groups[0]
    assert {k: tuple(group[k]) if k == "betas" else group[k] for k in expected} == expected

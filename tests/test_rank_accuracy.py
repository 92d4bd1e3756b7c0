"""Rank vs accuracy (docs/findings.md): Spearman's rho with its bootstrap interval, from the
results frame."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from zeroinit import rank_accuracy


def frame(ranks, accs, model="mnist_fnn", status="completed"):
    rows = []
    for i, (r, a) in enumerate(zip(ranks, accs)):
        for epoch, acc in ((1, a / 2), (2, a)):  # the last epoch is the one compared
            rows.append(
                {
                    "run": f"{model}-{i}",
                    "status": status,
                    "has_diagnostics": True,
                    "model.name": model,
                    "init.name": "bias_normal",
                    "init.bias_scale": 1.0,
                    "init.weight": "zero",
                    "init.bias": "normal",
                    "configuration": "bias_normal",
                    "line": f"{model}-{i}",
                    "seed": 0,
                    "epoch": epoch,
                    "test_acc": acc,
                    "erank_first": r,
                }
            )
    return pd.DataFrame(rows)


def test_spearman_and_its_bootstrap_interval():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=0.5, size=40)
    rho, low, high, n, k = rank_accuracy.spearman_ci(x, y)
    assert n == k == 40 and rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert low < rho < high and 0 < low  # a clear positive relation
    assert rank_accuracy.spearman_ci(x, rng.normal(size=40))[1] < 0  # none: CI spans 0
    assert math.isnan(rank_accuracy.spearman_ci([1, 2, 3], [1, 2, 3])[0])  # n < 4
    assert math.isnan(rank_accuracy.spearman_ci([1] * 6, range(6))[0])  # constant rank


def test_the_bootstrap_resamples_configurations_not_runs():
    """Ten configurations of 8 runs each, the runs of one configuration all alike: resampling
    runs would treat 80 points as independent; resampling the 10 configurations gives the
    interval of 10 points, wider."""
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=10)
    y0 = x0 + rng.normal(scale=1.0, size=10)
    x, y = np.repeat(x0, 8) + rng.normal(scale=1e-3, size=80), np.repeat(y0, 8)
    lines = np.repeat(np.arange(10), 8)
    _, low_runs, high_runs, n, k = rank_accuracy.spearman_ci(x, y)
    rho, low, high, n2, k2 = rank_accuracy.spearman_ci(x, y, lines)
    assert (n, k, n2, k2) == (80, 80, 80, 10)
    assert high - low > 1.5 * (high_runs - low_runs)
    assert math.isnan(rank_accuracy.spearman_ci(x[:16], y[:16], lines[:16])[0])  # 2 clusters


def test_the_rank_of_what_training_changed_is_read_from_the_checkpoint(tmp_path):
    """W - W0 with W from last.ckpt and W0 rebuilt from the run's config and seed: for a
    run that trained, its first layer's rank is that of the recorded change; W0 rebuilt
    bitwise (a run of 0 steps would give exactly 0)."""
    import torch

    from zeroinit.layer_metrics import weight_metrics
    from zeroinit.run import compose, run

    out = tmp_path / "run"
    cfg = compose(
        "trainer=cpu",
        f"paths.output_dir={out}",
        f"paths.log_dir={tmp_path}",
        "init=bias_normal",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "callbacks.diagnostics=null",
    )
    run(cfg)
    got = rank_accuracy.rank_change(out)
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    w = state["net.1.weight"].double()  # mnist_fnn: Flatten, Linear(784 -> 500), ...
    assert got["erank_change_first"] == pytest.approx(weight_metrics(w)["effective_rank"])
    assert got["erank_change_first"] > 1  # zero init: W0 = 0, the change is W itself
    assert math.isnan(rank_accuracy.rank_change(tmp_path / "nothing")["erank_change_first"])


def test_the_last_epoch_of_completed_runs_is_compared_and_logreg_left_out(tmp_path):
    runs = pd.concat(
        [
            frame([1, 2, 3, 4, 5], [0.2, 0.3, 0.5, 0.6, 0.9]),
            frame([9, 9], [0.1, 0.1], model="logreg"),
            frame([0.5], [0.99], status="failed").assign(run="failed-0"),
        ]
    )
    final = rank_accuracy.final_runs(runs)
    assert sorted(final["run"]) == [f"mnist_fnn-{i}" for i in range(5)]
    assert final.sort_values("run")["test_acc"].tolist() == [0.2, 0.3, 0.5, 0.6, 0.9]  # last epochs
    (everything, zero, random, unscaled, fnn, fnn_random) = rank_accuracy.correlation_rows(final)
    assert everything["configurations"] == 5  # each run here a configuration of its own
    assert everything["rho"] == pytest.approx(1.0) and zero["n"] == 5 and fnn["runs"] == "mnist_fnn"
    assert random["n"] == unscaled["n"] == fnn_random["n"] == 5
    assert fnn_random["runs"] == "mnist_fnn, zero weights, random biases"
    again = pd.concat([runs, frame([1], [0.2]).assign(run="other-sweep")])  # mnist_fnn-0 twice
    assert len(rank_accuracy.final_runs(again)) == 5
    text = rank_accuracy.report(runs, tmp_path)
    assert "| all models | 5 | 5 | 1.00 |" in text
    assert "| mnist_fnn | bias_normal x1 | 1 |" in text  # every run listed, no mean
    assert (tmp_path / "rank_vs_accuracy.png").stat().st_size > 10_000


def test_all_zero_init_counts_as_zero_weight_but_not_as_random_biases():
    runs = pd.concat(
        [
            frame([1, 2, 3, 4], [0.5, 0.6, 0.7, 0.8]),
            frame([0, 0], [0.1, 0.1], model="mnist_cnn").assign(**{"init.bias": "zero"}),
        ]
    )
    rows = {r["runs"]: r for r in rank_accuracy.correlation_rows(rank_accuracy.final_runs(runs))}
    assert rows["zero-weight inits"]["n"] == 6
    assert rows["zero weights, random biases"]["n"] == 4  # the all-zero runs left out

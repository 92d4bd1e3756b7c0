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
    rho, low, high, n = rank_accuracy.spearman_ci(x, y)
    assert n == 40 and rho == pytest.approx(stats.spearmanr(x, y).statistic)
    assert low < rho < high and 0 < low  # a clear positive relation
    assert rank_accuracy.spearman_ci(x, rng.normal(size=40))[1] < 0  # none: CI spans 0
    assert math.isnan(rank_accuracy.spearman_ci([1, 2, 3], [1, 2, 3])[0])  # n < 4
    assert math.isnan(rank_accuracy.spearman_ci([1] * 6, range(6))[0])  # constant rank


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
    assert everything["rho"] == pytest.approx(1.0) and zero["n"] == 5 and fnn["runs"] == "mnist_fnn"
    assert random["n"] == unscaled["n"] == fnn_random["n"] == 5
    assert fnn_random["runs"] == "mnist_fnn, zero weights, random biases"
    again = pd.concat([runs, frame([1], [0.2]).assign(run="other-sweep")])  # mnist_fnn-0 twice
    assert len(rank_accuracy.final_runs(again)) == 5
    text = rank_accuracy.report(runs, tmp_path)
    assert "| all models | 5 | 1.00 |" in text
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

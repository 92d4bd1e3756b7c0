"""report.py: grouping by config minus seed, Student-t 95% CIs, figures, tables, and runs that
are not completed listed but never averaged."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import report
from zeroinit.report import group_runs, mean_ci, table_rows
from zeroinit.results import load, read_runs, write_json_atomic


def fake_run(
    root,
    name,
    *,
    init="pytorch",
    model="mnist_fnn",
    seed=0,
    accs=(0.5, 0.9),
    status="completed",
    dataset="mnist",
    sweep="fig03_mnist_fnn",
    scale=1.0,
):
    bias = {"pytorch": "pytorch", "bias_normal": "normal", "zero": "zero"}[init]
    config = {
        "seed": seed,
        "sweep_name": sweep,
        "batch_size": 128,
        "paths": {"output_dir": str(root / name)},
        "dataset": {"name": dataset, "source": dataset},
        "model": {"name": model, "hidden": [500] if model != "logreg" else []},
        "init": {
            "name": init,
            "weight": "zero" if init != "pytorch" else "pytorch",
            "bias": bias,
            "bias_scale": scale,
        },
        "trainer": {"max_epochs": 2, "accelerator": "cpu"},
    }
    epochs = [
        {
            "epoch": i + 1,
            "test_acc": a,
            "test_loss": 1 - a,
            "train_loss": 1 - a,
            "train_acc": a,
            "epoch_time_s": 2.0,
        }
        for i, a in enumerate(accs)
    ]
    (root / name).mkdir(parents=True)
    write_json_atomic(
        root / name / "results.json",
        {
            "status": status,
            "config": config,
            "overrides": [],
            "epochs": epochs,
            "final": {"test_acc": accs[-1], "test_loss": 1 - accs[-1]},
            "wall_time_s": 1.0,
            "device": "cpu",
            "versions": {},
        },
    )


def test_mean_ci_is_the_student_t_interval():
    values = np.array([[0.90], [0.92], [0.97]])
    mean, half = mean_ci(values)
    expected = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / math.sqrt(3)
    assert mean[0] == pytest.approx(0.93) and half[0] == pytest.approx(expected)
    assert np.isnan(mean_ci(values[:1])[1][0])  # one run: no interval, not a zero-width one


def test_groups_by_everything_but_the_seed_and_never_averages_unfinished_runs(tmp_path):
    for seed, acc in enumerate([0.90, 0.92, 0.97]):
        fake_run(tmp_path, f"fnn-pytorch-s{seed}", seed=seed, accs=(0.5, acc))
    for seed, acc in enumerate([0.80, 0.84]):
        fake_run(tmp_path, f"fnn-bias-s{seed}", init="bias_normal", seed=seed, accs=(0.3, acc))
    fake_run(tmp_path, "fnn-bias-s2", init="bias_normal", seed=2, accs=(0.1,), status="running")
    fake_run(tmp_path, "fnn-bias-s3", init="bias_normal", seed=3, accs=(0.1,), status="failed")
    fake_run(tmp_path, "fnn-bias-s4", init="bias_normal", seed=4, accs=(0.1,), status="diverged")
    fake_run(tmp_path, "fnn-bias-s5", init="bias_normal", seed=5, accs=(0.1,), status="interrupted")
    fake_run(tmp_path, "logreg-s0", model="logreg", accs=(0.8, 0.91))

    figures = group_runs(load(tmp_path))
    assert list(figures) == ["fig03_mnist_fnn-mnist"]
    rows = {r["configuration"]: r for r in table_rows(figures)}
    assert set(rows) == {"mnist_fnn pytorch", "mnist_fnn bias_normal", "logreg pytorch"}
    py, bias = rows["mnist_fnn pytorch"], rows["mnist_fnn bias_normal"]
    assert py["n"] == 3 and py["final_test_acc_%"] == pytest.approx(93.0)
    assert py["ci95_%"] == pytest.approx(
        100 * stats.t.ppf(0.975, 2) * np.std([0.90, 0.92, 0.97], ddof=1) / math.sqrt(3)
    )
    # Only the two completed runs are averaged; the others are counted.
    assert bias["n"] == 2 and bias["final_test_acc_%"] == pytest.approx(82.0)
    assert (bias["running"], bias["failed"], bias["diverged"]) == (2, 1, 1)  # + interrupted
    # when the completed runs first reach 50% test accuracy: how late a scheme learns
    assert (py["epochs_to_50%"], py["epochs_to_50%_ci95"], py["reached_50%"]) == (1.0, 0.0, "3/3")
    assert (bias["epochs_to_50%"], bias["reached_50%"]) == (2.0, "2/2")
    assert py["paper_%"] == "~97.5" and rows["logreg pytorch"]["paper_%"].startswith("~92")


def test_cli_writes_figures_tables_and_lists_unfinished_runs(tmp_path, capsys):
    runs = tmp_path / "sweep"
    for seed in range(2):
        fake_run(runs, f"a-s{seed}", seed=seed, accs=(0.5, 0.9 + seed / 100))
        fake_run(runs, f"b-s{seed}", init="bias_normal", seed=seed, accs=(0.4, 0.8))
    fake_run(runs, "b-s2", init="bias_normal", seed=2, accs=(0.1,), status="running")
    assert report.main([str(runs), "-o", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    assert (out / "fig03_mnist_fnn-mnist.png").stat().st_size > 10_000
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    # Lines are labelled by what differs between them (here only the init).
    assert {r["configuration"]: r["n"] for r in table} == {"pytorch": "2", "bias_normal": "2"}
    text = (out / "report.md").read_text()
    assert "90.50 [" in text and "## Not averaged" in text and "b-s2: running" in text
    # every column is explained in docs/report.md
    doc = (Path(__file__).resolve().parent.parent / "docs" / "report.md").read_text()
    assert [c for c in table[0] if f"`{c}`" not in doc] == []
    # the terminal: the key columns, one row per line, and where the rest is
    shown = capsys.readouterr().out
    (line,) = [ln.split() for ln in shown.splitlines() if ln.startswith("  pytorch ")]
    assert " ".join(line) == "pytorch 2 0/2 [0.0, 84.2%] epoch 2 90.50 [84.15, 96.85] t 90.50 (2)"
    assert "| figure |" not in shown and "results.csv (every column: docs/report.md)" in shown


def test_cli_fails_clearly_without_runs(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err


def test_a_folder_of_unreadable_results_is_an_error_not_an_empty_report(tmp_path, capsys):
    (tmp_path / "run1").mkdir()
    (tmp_path / "run1" / "results.json").write_text("{garbage")
    assert report.main([str(tmp_path), "-o", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no readable results.json under ")
    assert not (tmp_path / "rep").exists()  # nothing written


def test_a_results_json_of_the_wrong_shape_is_skipped_and_named(tmp_path, capsys):
    for name, text in (
        ("list", "[1, 2]"),
        ("bare", '{"status": "completed"}'),
        ("epochs", '{"status": "completed", "config": {}, "epochs": [1]}'),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(text)
    runs = read_runs(tmp_path)
    assert sorted(r["status"] for _, r in runs) == ["unreadable"] * 3
    assert all("not a run's results.json" in r["error"] for _, r in runs)


def test_load_gives_the_frame_the_reports_tables_are_computed_from(tmp_path):
    accs = {"pytorch": [0.90, 0.92, 0.97], "bias_normal": [0.80, 0.84, 0.83]}
    for init, finals in accs.items():
        for seed, acc in enumerate(finals):
            fake_run(tmp_path, f"{init}-s{seed}", init=init, seed=seed, accs=(0.5, acc))
    fake_run(tmp_path, "zero-s0", init="zero", accs=(0.1,), status="failed")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")

    frame = load(tmp_path)
    assert frame["run"].nunique() == 8 and len(frame) == 6 * 2 + 1 + 1  # runs x epochs
    assert frame.loc[frame["init.name"] == "zero", "status"].tolist() == ["failed"]
    assert frame.loc[frame["status"] == "unreadable", "run"].tolist() == [str(tmp_path / "broken")]
    assert {"figure", "configuration", "seed", "init.bias_scale", "epoch", "test_acc"} <= set(
        frame.columns
    )
    # What a notebook computes from the frame is what the report's table says.
    last = frame[frame["status"] == "completed"].sort_values("epoch").groupby("run").tail(1)
    means = (100 * last.groupby("configuration")["test_acc"].mean()).to_dict()
    assert means == pytest.approx({"pytorch": 93.0, "bias_normal": 82.333333})
    assert report.main([str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "results.csv") as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    for label, mean in means.items():
        assert float(table[label]["final_test_acc_%"]) == pytest.approx(mean)
        assert table[label]["n"] == "3"
    assert table["zero"]["failed"] == "1" and table["zero"]["n"] == "0"


def test_report_writes_each_lines_mean_and_95_band_for_tensorboards_margin_charts(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    for seed, acc in enumerate([0.90, 0.92, 0.97]):
        fake_run(tmp_path, f"fnn-pytorch-s{seed}", seed=seed, accs=(0.5 + seed / 100, acc))
    fake_run(tmp_path, "fnn-bias-s0", init="bias_normal", accs=(0.3, 0.8))  # n=1: no band
    assert report.main([str(tmp_path), "-o", str(tmp_path / "out")]) == 0
    board = tmp_path / "out" / "tensorboard"
    tag = "test_mean_over_seeds/fig03_mnist_fnn-mnist/acc"

    def scalars(folder):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        return acc

    pytorch = scalars(board / "fig03_mnist_fnn-mnist" / "pytorch")
    mean = [e.value for e in pytorch.Scalars(tag)]
    half = stats.t.ppf(0.975, 2) * np.std([0.90, 0.92, 0.97], ddof=1) / math.sqrt(3)
    assert mean == pytest.approx([0.51, 0.93], abs=1e-6)  # 0-1, the unit of every run's test/acc
    # Student t at n=3 (zeroinit.outcomes.mean_interval), cut at 1: 0.93 + 0.0896 would leave it
    assert [e.value for e in pytorch.Scalars(tag + "_ci95_high")][1] == 1.0
    assert [e.value for e in pytorch.Scalars(tag + "_ci95_low")][1] == pytest.approx(
        0.93 - half, abs=1e-6
    )
    bias = scalars(board / "fig03_mnist_fnn-mnist" / "bias_normal")
    assert [e.value for e in bias.Scalars(tag + "_ci95_low")] == pytest.approx([0.30, 0.80])
    assert not list(board.glob("events.*"))  # no run named "." in TensorBoard's list
    (event,) = scalars(board / "fig03_mnist_fnn-mnist" / "bias_normal").Tensors(
        "custom_scalars__config__"
    )
    layout = layout_pb2.Layout.FromString(event.tensor_proto.string_val[0])
    (chart,) = layout.category[0].chart
    (series,) = chart.margin.series
    assert (series.value, series.lower, series.upper) == (
        tag,
        tag + "_ci95_low",
        tag + "_ci95_high",
    )


def test_line_labels_leave_out_unset_keys_and_keep_a_nested_settings_keys_together():
    from zeroinit.figures import line_labels

    base = {"model.name": "cifar_fnn", "init.name": "bias_uniform", "init.bias": "uniform"}
    lines = {
        "raw": {**base, "dataset.normalize": None},
        "quarter": {**base, "dataset.normalize.mean": [0, 0, 0], "dataset.normalize.std": [4] * 3},
        "centred": {**base, "dataset.normalize.mean": [0.5] * 3, "dataset.normalize.std": [1] * 3},
        "symmetric": {**base, "init.bias": "uniform_symmetric", "dataset.normalize": None},
    }
    labels = line_labels(lines)
    assert len(set(labels.values())) == len(lines)  # still one label per line
    assert "None" not in " ".join(labels.values())
    assert labels["raw"] == "init.bias=uniform"
    assert labels["quarter"] == (
        "dataset.normalize.mean=[0, 0, 0] dataset.normalize.std=[4, 4, 4] init.bias=uniform"
    )


def test_a_nan_accuracy_is_not_printed_as_one():
    from zeroinit.report import accuracy_cell

    nan = float("nan")
    row = {"n": 1, "final_test_acc_%": nan, "acc_ci95_low_%": nan, "acc_ci95_high_%": nan}
    assert accuracy_cell(row) == "no finite accuracy"
    row.update({"final_test_acc_%": 91.0})
    assert accuracy_cell(row) == "91.00 (n=1, no CI)"


def test_thirty_runs_at_exactly_chance_draw_a_figure(tmp_path):
    """The mean of 30 values of 0.1 is 0.10000000000000005, a hair above its 'all equal'
    interval: the error bar must not come out negative (matplotlib refuses it)."""
    for seed in range(30):
        fake_run(tmp_path / "sweep", f"zero-s{seed}", init="zero", seed=seed, accs=(0.1, 0.1))
    assert np.mean([0.1] * 30) > 0.1  # the case itself
    assert report.main([str(tmp_path / "sweep"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "fig03_mnist_fnn-mnist.png").stat().st_size > 10_000


def test_a_lines_colour_is_the_same_in_every_report_of_its_sweep():
    from zeroinit.report import PALETTE, line_colours

    three = line_colours(["zero", "pytorch", "bias_normal"])
    assert line_colours(["bias_normal", "zero", "pytorch"]) == three  # not by position
    assert len(set(three.values())) == 3  # distinct within a figure
    many = line_colours([f"bias_scale={s}" for s in range(10)])
    assert sorted(many.values()) == sorted(PALETTE)  # ten lines, ten colours

"""Runs that never learn: the statistics of zeroinit.outcomes against published values, and the
report on a real stacked sweep with one seed planted at chance (its results.json edited, as a
run that never left chance writes it)."""

import csv
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

import report
from zeroinit import outcomes
from zeroinit.report import draw_figure, group_runs
from zeroinit.results import load, read_results, write_json_atomic


def test_exact_interval_of_a_rate():
    low, high = outcomes.clopper_pearson(1, 5)
    assert (low, high) == pytest.approx((0.00505, 0.71642), abs=1e-5)
    assert outcomes.clopper_pearson(0, 50) == pytest.approx((0.0, 0.07112), abs=1e-5)
    assert outcomes.clopper_pearson(50, 50)[1] == 1.0  # never past 100%


def test_rate_difference_is_newcombes_hybrid_score_interval():
    # Newcombe (1998), Statistics in Medicine 17:873, Table II, method 10
    assert outcomes.newcombe(56, 70, 48, 80) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)
    assert outcomes.newcombe(9, 10, 3, 10) == pytest.approx((0.6, 0.1705, 0.8090), abs=1e-4)
    assert outcomes.fisher(3, 20, 0, 20) == pytest.approx(
        stats.fisher_exact([[3, 17], [0, 20]]).pvalue
    )


def test_log_rank_of_lines_that_all_learned_at_one_step_is_undefined_without_a_warning():
    import pandas as pd

    at_391 = pd.DataFrame({"learned": [True] * 3, "learn_step": [391.0] * 3, "last_step": 391.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's 0/0 would warn here
        assert math.isnan(outcomes.logrank(at_391, at_391.copy()))
    one_failed = at_391.assign(learned=[True, True, False], learn_step=[391.0, 391.0, np.nan])
    assert 0 < outcomes.logrank(at_391, one_failed) < 1


def test_the_mean_of_a_bimodal_line_gets_an_interval_inside_the_scale():
    five = [0.10, 0.49, 0.50, 0.48, 0.49]  # Figure 8's pattern: one seed at chance
    low, high, method = outcomes.mean_interval(five)
    t_half = stats.t.ppf(0.975, 4) * np.std(five, ddof=1) / math.sqrt(5)
    assert method == "t" and low == pytest.approx(np.mean(five) - t_half) and high <= 1.0
    near_top = [1.0, 1.0, 0.99, 0.2]
    assert outcomes.mean_interval(near_top)[1] == 1.0  # the t interval ends past 1: cut there
    many = [0.1] * 3 + [0.49] * 14 + [0.51] * 3
    first, again = outcomes.mean_interval(many), outcomes.mean_interval(many)
    assert first == again and first[2] == "bca"  # seeded: the same numbers every time
    assert 0.1 <= first[0] < np.mean(many) < first[1] <= 0.51
    assert outcomes.mean_interval([0.3])[2] == "n=1" and math.isnan(
        outcomes.mean_interval([0.3])[0]
    )
    assert outcomes.mean_interval([0.1, 0.1]) == (0.1, 0.1, "all equal")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A real stacked sweep (logreg, bias_uniform and pytorch x 5 seeds, 2 epochs), its
    bias_uniform seed 3 turned into a run that never left chance and predicted one class."""
    import subprocess
    import sys

    from conftest import ROOT

    log_dir = tmp_path_factory.mktemp("planted")
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            "-m",
            "model=logreg",
            "init=bias_uniform,pytorch",
            "seed=0,1,2,3,4",
            "trainer.max_epochs=2",
            "callbacks.diagnostics=null",
            "launcher=stacked",
            "sweep_name=planted",
            f"paths.log_dir={log_dir}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = log_dir / "sweeps" / "planted"
    (failed,) = [
        p for p in sweep.iterdir() if "bias_uniform-x1" in p.name and p.name.endswith("-s3")
    ]
    results = read_results(failed)
    for entry in results["epochs"]:
        entry.update(test_acc=0.1, test_loss=2.3026, test_top_class_frac=1.0)
    results["final"] = {"test_acc": 0.1, "test_loss": 2.3026}
    write_json_atomic(failed / "results.json", results)
    return sweep


def test_a_run_at_chance_is_never_learned_by_its_horizon(planted, tmp_path, capsys):
    assert report.main([str(planted), "-o", str(tmp_path)]) == 0
    with open(tmp_path / "results.csv") as f:
        lines = {r["configuration"]: r for r in csv.DictReader(f)}
    uniform, usual = lines["bias_uniform"], lines["pytorch"]
    assert uniform["never_learned"] == "1/5" and usual["never_learned"] == "0/5"
    assert float(uniform["horizon_step"]) == 64  # 2 epochs of 32 steps: "by step 64"
    assert float(uniform["never_learned_rate_%"]) == 20
    low, high = outcomes.clopper_pearson(1, 5)
    assert float(uniform["never_learned_ci95_low_%"]) == pytest.approx(100 * low)
    assert float(uniform["never_learned_ci95_high_%"]) == pytest.approx(100 * high)
    # both means: over all five, and over the four that learned
    finals = sorted(float(v) for v in uniform["runs_final_acc_%"].split())
    assert finals[0] == 10.0 and len(finals) == 5
    assert float(uniform["final_test_acc_%"]) == pytest.approx(np.mean(finals))
    assert uniform["learned_n"] == "4"
    assert float(uniform["learned_mean_acc_%"]) == pytest.approx(np.mean(finals[1:]))
    # the interval stays in [0, 100] where Student t leaves the data's range
    assert 0 <= float(uniform["acc_ci95_low_%"]) <= float(uniform["acc_ci95_high_%"]) <= 100
    assert uniform["one_class"] == "1/5"
    # the existing columns keep their meaning: the Student-t half-width over all completed runs
    assert float(uniform["ci95_%"]) == pytest.approx(
        stats.t.ppf(0.975, 4) * np.std(finals, ddof=1) / math.sqrt(5)
    )
    text = (tmp_path / "report.md").read_text()
    assert "1/5 = 20.0% [0.5, 71.6]" in text and "10.00*(1)" in text


def test_every_run_and_its_censored_time_to_learn(planted, tmp_path):
    report.main([str(planted), "-o", str(tmp_path)])
    with open(tmp_path / "runs.csv") as f:
        runs = [r for r in csv.DictReader(f) if r["configuration"] == "bias_uniform"]
    by_seed = {int(r["seed"]): r for r in runs}
    assert len(by_seed) == 5
    stuck = by_seed[3]
    assert stuck["learned"] == "False" and stuck["steps_to_learn"] == ""  # censored...
    assert float(stuck["censored_at_step"]) == 64  # ... at its last step
    assert stuck["one_class"] == "True"
    for seed in (0, 1, 2, 4):
        assert by_seed[seed]["learned"] == "True" and float(by_seed[seed]["steps_to_learn"]) in (
            32,
            64,
        )
    # Kaplan-Meier: 4 of 5 learned by their first or second epoch end, one censored at 64
    groups = group_runs(load(planted))["planted-mnist5k"]
    (g,) = [g for g in groups if g.label == "bias_uniform"]
    curve = outcomes.time_to_learn(g.outcomes())
    assert curve["n"] == 5 and curve["horizon"] == 64 and curve["not_learned"][-1] == 0.2
    assert curve["median"] in (32, 64)


def test_lines_compare_by_rate_and_paired_by_seed(planted, tmp_path):
    report.main([str(planted), "-o", str(tmp_path)])
    with open(tmp_path / "comparisons.csv") as f:
        (pair,) = list(csv.DictReader(f))
    assert pair["differs_in"] == "init"
    assert {pair["line_a"], pair["line_b"]} == {"bias_uniform", "pytorch"}
    a_is_uniform = pair["line_a"] == "bias_uniform"
    assert pair["never_learned_a" if a_is_uniform else "never_learned_b"] == "1/5"
    diff, low, high = outcomes.newcombe(1, 5, 0, 5)
    sign = 1 if a_is_uniform else -1
    assert float(pair["rate_diff_%"]) == pytest.approx(sign * 100 * diff)
    assert float(pair["fisher_p"]) == pytest.approx(1.0)
    assert pair["paired_seeds"] == "5"
    # seed 3: the planted run lost to its pytorch twin
    better = int(pair["seeds_b_better" if a_is_uniform else "seeds_a_better"])
    assert better >= 1
    assert -100 <= float(pair["paired_ci95_low_%"]) <= float(pair["paired_ci95_high_%"]) <= 100


def test_the_figure_draws_each_run_and_the_failed_one_hollow(planted):
    groups = group_runs(load(planted))["planted-mnist5k"]
    fig = draw_figure("planted-mnist5k", groups)
    curves, strip, km = fig.axes[:3]
    hollow = [
        c.get_offsets()
        for c in strip.collections
        if len(c.get_offsets()) and not c.get_facecolors().any()
    ]
    assert len(hollow) == 1 and hollow[0][:, 1].tolist() == [10.0]  # seed 3, at chance
    dots = sum(len(c.get_offsets()) for c in strip.collections)
    assert dots == 10  # every run of both lines
    assert "n=5 runs per line, mean ± 95% CI" in curves.get_title()
    assert km.get_lines()  # a time-to-learn curve per line


def test_tensorboard_gets_the_bounded_band_and_the_share_not_learned(planted, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report.main([str(planted), "-o", str(tmp_path)])
    board = tmp_path / "tensorboard" / "planted-mnist5k" / "bias_uniform"
    events = EventAccumulator(str(board))
    events.Reload()
    tag = "test_mean_over_seeds/planted-mnist5k"
    left = [e.value for e in events.Scalars(f"{tag}/not_learned_frac")]
    assert left[-1] == pytest.approx(0.2)
    highs = [e.value for e in events.Scalars(f"{tag}/acc_ci95_high")]
    lows = [e.value for e in events.Scalars(f"{tag}/acc_ci95_low")]
    assert all(0 <= lo <= hi <= 1 for lo, hi in zip(lows, highs))


def test_the_margin_is_a_report_option(planted, tmp_path, capsys):
    # a margin so wide that no run of two logreg epochs counts as learned
    report.main([str(planted), "-o", str(tmp_path), "--margin", "89"])
    with open(tmp_path / "results.csv") as f:
        lines = {r["configuration"]: r for r in csv.DictReader(f)}
    assert lines["pytorch"]["never_learned"] == "5/5"
    with pytest.raises(SystemExit) as bad:
        report.main([str(planted), "--margin", "120"])
    assert bad.value.code == 2
    assert "--margin: 120 is not allowed; allowed: points in (0, 100)" in capsys.readouterr().err


def test_an_earlier_horizon_judges_every_run_at_that_step(planted, tmp_path):
    report.main([str(planted), "-o", str(tmp_path), "--horizon", "32"])
    with open(tmp_path / "results.csv") as f:
        lines = {r["configuration"]: r for r in csv.DictReader(f)}
    assert float(lines["bias_uniform"]["horizon_step"]) == 32 and lines["pytorch"]["epochs"] == "1"
    assert lines["bias_uniform"]["never_learned"].endswith("/5")
    assert "**Judged at step 32**" in (tmp_path / "report.md").read_text()


def test_runs_from_before_steps_were_recorded_still_get_their_outcome(planted, tmp_path):
    old = tmp_path / "old"
    for run in planted.iterdir():
        if not (run / "results.json").exists():
            continue
        results = json.loads((run / "results.json").read_text())
        for entry in results["epochs"]:
            entry.pop("step"), entry.pop("test_top_class_frac")
        results.pop("num_classes")
        (old / run.name).mkdir(parents=True)
        write_json_atomic(old / run.name / "results.json", results)
    report.main([str(old), "-o", str(tmp_path / "out")])
    with open(tmp_path / "out" / "results.csv") as f:
        lines = {r["configuration"]: r for r in csv.DictReader(f)}
    # classes from the dataset's name; no step record: no horizon or time in steps
    assert lines["bias_uniform"]["never_learned"] == "1/5"
    assert math.isnan(float(lines["bias_uniform"]["horizon_step"]))
    assert "| 1/5 = 20.0% [0.5, 71.6] | epoch 2 |" in (tmp_path / "out" / "results.md").read_text()

"""failure_study.py: each completed run's outcome beside what the diagnostics saw of its first
layer early on, from real runs."""

import csv

import failure_study
from zeroinit.run import run


def test_markers_of_real_runs_and_a_summary_per_outcome(make_cfg, tmp_path, capsys):
    for seed in (0, 1):
        run(
            make_cfg(
                "init=bias_uniform",
                f"seed={seed}",
                "trainer.max_epochs=1",
                "callbacks.diagnostics.symmetry_points=24",
                "callbacks.diagnostics.symmetry_min_gap=1",
                f"paths.output_dir={tmp_path / 'runs' / f's{seed}'}",
            )
        )
    out = tmp_path / "markers.csv"
    assert failure_study.main([str(tmp_path / "runs"), "-o", str(out)]) == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    for r in rows:
        assert 10 <= int(r["marker_step"]) <= 20  # the last measured step <= 20 of 32
        assert 0 <= float(r["neg_preact_1@marker"]) <= 1 and "neg_preact_2@marker" not in r
        assert r["learned"] == "True" and r["wakeup_steps"]
    said = capsys.readouterr().out
    assert "| mnist_fnn bias_uniform | learned | n=2 | negative pre-activations at step" in said


def test_runs_without_diagnostics_are_one_clear_line(make_cfg, tmp_path, capsys):
    run(make_cfg("trainer.max_epochs=1", "callbacks.diagnostics=null"))
    assert failure_study.main([str(tmp_path)]) == 2
    assert "no completed run with diagnostics" in capsys.readouterr().err

"""report_diagnostics: the summary columns and Figure 12 drawn from real runs' results.json,
and the report and the fig12 preset that use them."""

import math

import pytest

import report
from test_diagnostics import FNN4, SHORT
from zeroinit.layer_metrics import METRICS
from zeroinit.report_diagnostics import plot_gradient_flow, summary_columns
from zeroinit.results import read_results, write_json_atomic
from zeroinit.run import run


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
    assert set(cols) == {
        "wakeup_all",
        "erank_mean",
        "erank_first",
        "nrank_frac_min",
        "distinct_frac_min",
        "dead_frac_mean",
    }
    assert summary_columns(results["pytorch"])["distinct_frac_min"] == 1.0
    assert all(isinstance(v, float) and math.isfinite(v) for v in cols.values())
    assert math.isnan(summary_columns({"status": "completed"})["erank_mean"])
    png = plot_gradient_flow(results, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # report.py draws Figure 12 where the runs' config asks for it, pytorch beside bias_normal
    assert report.main([str(tmp_path), "-o", str(tmp_path / "plain")]) == 0
    assert not list((tmp_path / "plain").glob("*gradient_flow.png"))
    for d in two_runs.values():
        r = read_results(d)
        r["config"]["report"]["gradient_flow"] = True
        write_json_atomic(d / "results.json", r)
    assert report.main([str(tmp_path), "-o", str(tmp_path / "rep")]) == 0
    (png,) = (tmp_path / "rep").glob("*-gradient_flow.png")
    assert png.stat().st_size > 10_000
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "bias_normal: wake-up step per layer, input to output: [4, 3, 2, 1]" in text
    assert "pytorch: wake-up step per layer, input to output: [1, 1, 1, 1]" in text


def test_fig12_experiment_composes_offline(make_cfg):
    cfg = make_cfg("experiment=fig12_gradient_flow", "dataset=mnist5k")
    assert (cfg.model.name, cfg.dataset.name, cfg.sweep_name) == (
        "cifar_fnn",
        "mnist5k",
        "fig12_gradient_flow",
    )
    assert cfg.callbacks.diagnostics.steps == 5
    assert set(METRICS) >= {"effective_rank", "distinct_units"}


@pytest.mark.slow
def test_fig12_sweep_end_to_end(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "-m",
            "experiment=fig12_gradient_flow",
            "dataset=mnist5k",
            "trainer=cpu",
            f"paths.log_dir={tmp_path}",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=6",
        ],
        cwd=root,
        check=True,
        capture_output=True,
    )
    sweep = tmp_path / "sweeps" / "fig12_gradient_flow"
    assert report.main([str(sweep), "-o", str(tmp_path / "rep")]) == 0
    assert list((tmp_path / "rep").glob("*-gradient_flow.png"))
    inits = sorted(
        read_results(p.parent)["config"]["init"]["name"] for p in sweep.rglob("results.json")
    )
    assert inits == ["bias_normal", "pytorch"]

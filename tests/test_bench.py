"""benchmarks/ runs: tiny sizes, no timing assertions (timings belong in benchmarks/README.md)."""

import json
import math
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench
import gpu_bench  # noqa: E402
import paper_time  # noqa: E402
import timing  # noqa: E402


def test_bench_times_every_variant_on_tiny_sizes(tmp_path):
    out = bench.main(
        [
            "--models",
            "mnist_fnn,cifar_fnn",
            "--n-train",
            "256",
            "--repeats",
            "1",
            "--also",
            "callbacks.diagnostics=null",
            "--json",
            str(tmp_path / "b.json"),
        ]
    )
    assert [r["model"] for r in out["models"]] == ["mnist_fnn", "cifar_fnn"]
    for row in out["models"]:
        assert row["scaled"] and row["n_train"] == 256
        for key in (
            "project",
            "bare",
            "conventional",
            "bound",
            "project callbacks.diagnostics=null",
        ):
            assert math.isfinite(row[key]) and row[key] > 0
    # forward+backward FLOPs of a full epoch, counted on the real model: 784-500-10 on 60,000
    # train images (the first layer needs no input gradient) and 10,000 test images
    fnn = out["models"][0]["flops"]
    assert fnn == pytest.approx(
        60_000 * 2 * (3 * 784 * 500 + 3 * 500 * 10 - 784 * 500)
        + 10_000 * 2 * (784 * 500 + 500 * 10)
    )
    assert "| mnist_fnn |" in out["table"]
    assert json.loads((tmp_path / "b.json").read_text())["models"][1]["model"] == "cifar_fnn"


def test_bench_times_a_sweep_in_one_process():
    out = bench.main(["--models", "", "--sweep", "init=zero,pytorch trainer.max_epochs=1"])
    sweep = out["sweep"]
    assert sweep["runs"] == 2 and sweep["statuses"] == ["completed"]
    assert sweep["runs_per_min"] > 0 and out["import_s"] > 0


def test_gpu_bench_dry_run_and_paper_estimate(tmp_path):
    runs = gpu_bench.paper_runs()
    figures = {fig for fig, *_ in runs}
    assert {f"fig{n:02d}" for n in range(3, 12)} <= {f[:5] for f in figures}
    assert ("fig11_resnet50", "resnet50", "cifar10", 30) in runs
    seconds = {k: 1.0 for k in gpu_bench.PAPER_MODELS}
    hours = gpu_bench.estimate(runs, seconds)
    assert sum(e for _, e, _ in hours.values()) == sum(r[3] for r in runs)

    out = gpu_bench.main(
        [
            "--tiny",
            "--models",
            "mnist_fnn,logreg_mnist",
            "--workers",
            "1",
            "--json",
            str(tmp_path / "g.json"),
        ]
    )
    assert {r["model"] for r in out["models"]} == {"mnist_fnn", "logreg_mnist"}
    assert all(r["project speed=bf16 callbacks.diagnostics=null"] > 0 for r in out["models"])
    assert "paper_hours" not in out  # not every paper model was timed: no estimate


@pytest.mark.slow
def test_gpu_bench_dry_run_of_every_model(tmp_path):
    out = gpu_bench.main(["--tiny", "--workers", "0"])
    assert set(out["paper_hours"]) == {
        "project",
        "project callbacks.diagnostics=null",
        "project speed=bf16 callbacks.diagnostics=null",
        "conventional",
    }


def test_paper_time_reads_the_figures_and_launchers_of_make_paper():
    figures = paper_time.paper_figures()
    assert len(figures) == 9 and figures["fig11_resnet50"] == "sequential"
    assert {v for f, v in figures.items() if f != "fig11_resnet50"} == {"stacked"}
    recipe = (ROOT / "Makefile").read_text().split("\npaper:")[1].split("\n\n")[0]
    assert "$(call sweep,$(MNIST_FIGS) $(CIFAR_FIGS))" in recipe  # what it assumes: -m's default
    assert "$(call sweep,$(RESNET_FIGS),$(ONE_BY_ONE))" in recipe
    runs = paper_time.paper_runs()
    assert len(runs) == 225 and "fig12_gradient_flow" not in {r[0] for r in runs}


def test_paper_time_hours_from_seconds_per_run_epoch_and_nothing_timed_twice(capsys):
    pairs = paper_time.needed(paper_time.paper_runs())
    assert ("resnet50", "sequential") in pairs and ("logreg_cifar", "stacked") in pairs
    # 15 stacked runs take 15 s an epoch (1 s a run-epoch); one ResNet-50 run 100 s an epoch
    fits = {
        (m, v, s): timing.Fit(None, 0.0, 15.0 if v == "stacked" else 100.0)
        for m, v in pairs
        for s in ("fp32", "bf16")
    }
    out = paper_time.main(["--speeds", "fp32,bf16"], fits=fits)  # all known: nothing timed
    epochs = {fig: 0 for fig in paper_time.FIGURES}
    for fig, *_, e in paper_time.paper_runs():
        epochs[fig] += e
    resnet = epochs.pop("fig11_resnet50")
    expected = (sum(epochs.values()) * 1.0 + resnet * 100.0) / 3600
    assert out["hours"] == {"fp32": pytest.approx(expected), "bf16": pytest.approx(expected)}
    assert f"fp32 {expected:.2f} h, bf16 {expected:.2f} h" in capsys.readouterr().out
    fits.pop(("resnet50", "sequential", "bf16"))
    text, totals = paper_time.table(paper_time.paper_runs(), fits, ["fp32", "bf16"])
    assert totals["bf16"] is None and "| fig11_resnet50 | sequential | 15 | 450 |" in text


def test_paper_time_dry_run_times_each_speed_through_the_launcher():
    out = paper_time.main(["--tiny", "--models", "logreg_mnist", "--speeds", "fp32,tf32"])
    assert set(out["per_run_epoch"]) == {"logreg_mnist stacked fp32", "logreg_mnist stacked tf32"}
    assert all(v > 0 for v in out["per_run_epoch"].values())
    assert out["hours"] == {"fp32": None, "tf32": None}  # not every model timed: no total


def test_extrapolation_separates_the_once_per_fit_cost_from_the_per_image_cost():
    # 2 s paid once per fit + 1 ms per image, timed at 5,000 and 2,500 of 50,000 images (the
    # medians: 7.0 and 4.5 s; 9.9 is an outlier): 2 + 50 = 52 s, not 7.0 x 10 = 70 s
    fit = timing.extrapolate(
        [(5000, 7.0), (2500, 4.5), (5000, 6.9), (2500, 4.4), (2500, 4.6), (5000, 9.9)], 50_000
    )
    assert fit.fallback is None
    assert fit.fixed == pytest.approx(2.0) and fit.per_image == pytest.approx(1e-3)
    assert fit.estimate == pytest.approx(52.0)
    # a full epoch: its one size, unscaled, no fixed cost separated
    assert timing.extrapolate([(50_000, 26.5), (50_000, 26.7)], 50_000) == (
        None,
        26.6 / 50_000,
        26.6,
        None,
    )


@pytest.mark.parametrize(
    "points, reason",
    [
        ([(1000, 3.0), (500, 3.1)], "did not grow"),  # n/2 took longer: noise
        ([(1000, 3.0), (500, 3.0)], "did not grow"),
        ([(1000, 3.0), (500, 1.0)], "negative fixed"),  # the line would cross below zero
    ],
)
def test_extrapolation_falls_back_to_plain_scaling_on_noise(points, reason):
    fit = timing.extrapolate(points, 10_000)
    assert reason in fit.fallback and fit.fixed is None
    assert fit.estimate == pytest.approx(30.0)  # 3.0 s x 10,000 / 1,000
    assert reason in timing.describe_fits({"project": fit})


def test_part_epochs_are_timed_at_two_sizes_interleaved():
    assert timing.sizes(5000, 50_000) == (5000, 2500) and timing.sizes(50_000, 50_000) == (50_000,)
    order = [(r, n, tuple(v)) for r, n, v in timing.schedule(["a", "b"], (8, 4), 2)]
    assert order == [(0, 8, ("a", "b")), (0, 4, ("a", "b")), (1, 4, ("b", "a")), (1, 8, ("b", "a"))]


def test_gpu_check_hands_its_stacked_fp32_sweeps_to_the_paper_estimate():
    import gpu_check

    fit = timing.Fit(1.0, 1e-4, 6.0)
    stacked = {"rows": [{"model": "mnist_fnn", "fits": {"stacked": fit._asdict(), "bare": {}}}]}
    assert gpu_check.reusable(stacked, tiny=False) == {("mnist_fnn", "stacked", "fp32"): fit}
    assert gpu_check.reusable(stacked, tiny=True) == {}  # --tiny stacks 2 runs, not 15
    assert gpu_check.reusable({}, tiny=False) == {}  # the section failed: measure anew


def test_stacked_conv_alternatives_give_the_grouped_convolutions_results():
    import stacked_conv_bench

    out = stacked_conv_bench.main(["--tiny", "--models", "mnist_cnn"])
    assert len(out["rows"]) == 2 and not out["bad"]  # mnist_cnn's two convolutions
    assert set(out["rows"][0]["ms"]) == {"grouped", "grouped_nhwc", "loop", "vmap"}  # no CUDA
    assert all(d < 1e-9 for r in out["rows"] for d in r["diff"].values())


def test_stacked_bench_profiles_a_stacked_epoch(capsys):
    import stacked_bench

    stacked_bench.main(
        [
            "--models",
            "logreg_mnist",
            "--n-train",
            "256",
            "--repeats",
            "1",
            "--variants",
            "stacked",
            "--members",
            "2",
            "--profile",
            "logreg_mnist",
        ]
    )
    printed = capsys.readouterr().out
    assert "logreg_mnist, 2 runs stacked, 256 train images" in printed
    assert "Optimizer.step#Adam.step" in printed  # torch.profiler's table, by op

"""zeroinit.results: what a run writes and how (results.json rewritten atomically, its
statuses, TensorBoard's curves, HPARAMS and TEXT), read back from real short runs."""

import json
import math

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from test_run import SHORT, short_run
from zeroinit.results import read_results, write_json_atomic
from zeroinit.run import run


def test_tensorboard_events_hold_the_curves_and_hparams(make_cfg, tmp_path):
    results = short_run(make_cfg, tmp_path, "seed=3")
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert events, list(tmp_path.iterdir())
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {"test/acc", "test/loss", "train/loss", "train/acc"} <= set(acc.Tags()["scalars"])
    test_acc = acc.Scalars("test/acc")
    assert [e.step for e in test_acc] == [1, 2]  # logged against the epoch
    assert [e.value for e in test_acc] == pytest.approx([e["test_acc"] for e in results["epochs"]])
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")


def test_diverged_run_stops_and_says_so(make_cfg, tmp_path):
    cfg = make_cfg(
        "optimizer=sgd",
        "optimizer.lr=1e38",
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=3",
    )
    results = run(cfg)
    assert results["status"] == "diverged"
    assert len(results["epochs"]) == 1
    assert math.isnan(results["epochs"][0]["train_loss"])
    assert read_results(tmp_path)["status"] == "diverged"


def test_crashed_run_is_marked_failed(make_cfg, tmp_path):
    cfg = make_cfg(*SHORT, "+callbacks.boom._target_=fakedata.FailAtEpochEnd")
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg)
    results = read_results(tmp_path)
    assert results["status"] == "failed"
    assert "boom" in results["error"]


def test_write_json_atomic_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"status": "running", "epochs": [1, 2]})
    before = path.read_bytes()
    with pytest.raises(TypeError):  # json.dump fails mid-way, after writing some of it
        write_json_atomic(path, {"status": "completed", "epochs": [1, 2, 3], "bad": object()})
    assert path.read_bytes() == before
    assert json.loads(before) == {"status": "running", "epochs": [1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left
    write_json_atomic(path, {"status": "completed", "x": float("nan")})
    data = json.loads(path.read_text())
    assert data["status"] == "completed" and math.isnan(data["x"])
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_tensorboard_hparams_are_the_experiments_keys_with_no_fake_metric(make_cfg, tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    short_run(make_cfg, tmp_path, "seed=3", "init=bias_normal", "bias_scale=down")
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    hparams = {
        k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
        for k, v in start.hparams.items()
    }
    assert hparams == {
        "dataset": "mnist5k",
        "model": "mnist_fnn",
        "init": "bias_normal",
        "init.weight": "zero",
        "init.bias": "normal",
        "init.bias_scale": 0.01,
        "seed": "3",
        "optimizer": "Adam",
        "optimizer.lr": 0.001,
        "batch_size": "32",
        "epochs": "2",
        "activation": "elu",
        "speed": "fp32",
    }
    saved = yaml.safe_load((tmp_path / "hparams.yaml").read_text())  # Lightning's copy
    assert saved == hparams
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]
    ).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["test/acc", "test/loss"]
    # TensorBoard's table shows 5 columns by default, `differs` first: what a sweep varies
    # and the epochs (the dataset starts the run's name)
    assert sorted(h.name for h in experiment.hparam_infos if h.differs) == [
        "epochs",
        "init",
        "init.bias_scale",
        "model",
        "seed",
    ]
    scalars = acc.Tags()["scalars"]
    assert not [t for t in scalars if t.startswith("hp")]  # no duplicate of test/acc
    assert [e.step for e in acc.Scalars("test/acc")] == [1, 2]  # no 0 at step 0
    assert "config" in "".join(acc.Tags()["tensors"])  # the whole config, in TEXT


def test_results_json_follows_the_umask_like_any_other_file(tmp_path):
    """A temporary file is created 0600; renamed into place as it is, results.json would be
    unreadable by a group on a shared disk. Under umask 022 it is 0644, as `open` makes."""
    import os
    import stat

    from zeroinit.files import FILE_MODE
    from zeroinit.results import write_json_atomic

    write_json_atomic(tmp_path / "results.json", {"status": "completed"})
    (tmp_path / "plain.txt").write_text("x")
    mode = stat.S_IMODE(os.stat(tmp_path / "results.json").st_mode)
    assert mode == FILE_MODE == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode)
    assert mode & 0o044 == 0o044  # group- and world-readable under the usual umask 022
    assert not list(tmp_path.glob(".*.tmp"))

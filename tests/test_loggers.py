"""conf/logger as a set: TensorBoard, CSV, MLflow and W&B get the same numbers, tested against
the real packages (MLflow's SQLite store read back with mlflow.search_runs; W&B's offline run
file parsed record by record)."""

import csv
import glob
import json
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from zeroinit.loggers import build_loggers

SWEEP = [
    "init=zero,bias_normal",
    "seed=0,1",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=4",
    "callbacks.diagnostics.symmetry_min_gap=1",
]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.glob("sweeps/*/*/results.json"))


def tensorboard_scalars(run_dir: Path) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(run_dir: Path) -> list:
    """The protobuf records of a W&B offline run file (LevelDB log format, as W&B's own
    reader reads it): 7-byte header, then 32 KiB blocks of [crc32c, length, type] chunks."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "*.wandb"))
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending += chunk
        if kind in (1, 4):  # full, last
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
        elif kind == 0:
            break
    return records


@pytest.mark.parametrize("selection", ["~logger", "logger=[tensorboard,csv,mlflow,wandb]"])
def test_logger_group_composes_into_a_set(make_cfg, selection):
    cfg = make_cfg(selection)
    if selection == "~logger":  # no logger at all
        assert build_loggers(cfg, {}) == []
    else:
        assert list(cfg.logger) == ["tensorboard", "csv", "mlflow", "wandb"]
        assert all("_target_" in spec for spec in cfg.logger.values())


def test_a_stacked_sweep_logs_the_same_numbers_to_every_logger(tmp_path, here, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)  # sqlite:///outputs/mlflow.db, relative to where train.py runs
    out = here(
        "train.py",
        "-m",
        *SWEEP,
        "logger=[tensorboard,csv,mlflow,wandb]",
        "launcher=stacked",
        "hydra.launcher.stack_size=4",
        "sweep_name=loggers",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stacked: 4 runs in one fit" in out.stdout
    runs = run_dirs(tmp_path / "outputs")
    assert len(runs) == 4

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    found = mlflow.search_runs(experiment_names=["loggers"])  # one experiment per sweep
    assert len(found) == 4 and set(found["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient()
    for run_dir in runs:
        results = json.loads((run_dir / "results.json").read_text())
        cfg = results["config"]
        want = [(e["epoch"], e["test_acc"]) for e in results["epochs"]]
        assert len(want) == 2

        tb = tensorboard_scalars(run_dir)
        assert [(s, pytest.approx(v)) for s, v in tb["test/acc"]] == want
        assert "weight_symmetry/effective_rank/01_1_Linear_500x784" in tb  # diagnostics too

        # MLflow: found by its params, named after its folder, the same curve
        (run_id,) = found.loc[
            (found["params.init"] == cfg["init"]["name"])
            & (found["params.seed"] == str(cfg["seed"])),
            "run_id",
        ]
        assert results["logger_runs"]["mlflow"] == run_id
        run = client.get_run(run_id)
        assert run.info.run_name == run_dir.name
        assert run.data.params["init.bias_scale"] == "1.0"
        history = client.get_metric_history(run_id, "test/acc")
        assert sorted((m.step, pytest.approx(m.value)) for m in history) == want
        ranks = client.get_metric_history(
            run_id, "weight_symmetry/effective_rank/01_1_Linear_500x784"
        )
        assert [(m.step, m.value) for m in ranks] == [
            (s, pytest.approx(v))
            for s, v in tb["weight_symmetry/effective_rank/01_1_Linear_500x784"]
        ]

        # CSV: the epoch rows
        rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
        got = [(int(r["step"]), float(r["test/acc"])) for r in rows if r.get("test/acc")]
        assert got == [(s, pytest.approx(v)) for s, v in want]

        # W&B: one offline run of its own, config = the experiment's keys, the same curve
        records = wandb_records(run_dir)
        (run_record,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run_record.display_name == run_dir.name and run_record.run_group == "loggers"
        assert run_record.run_id == results["logger_runs"]["wandb"]
        config = {
            item.key: json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "config"
            for item in r.config.update
        }
        assert config["init"] == cfg["init"]["name"] and config["seed"] == str(cfg["seed"])
        history = [
            {
                item.key or ".".join(item.nested_key): json.loads(item.value_json)
                for item in r.history.item
            }
            for r in records
            if r.WhichOneof("record_type") == "history"
        ]
        got = [(h["trainer/global_step"], h["test/acc"]) for h in history if "test/acc" in h]
        assert got == [(s, pytest.approx(v)) for s, v in want]


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, here, monkeypatch):
    import mlflow

    monkeypatch.chdir(tmp_path)
    args = ["+trainer.limit_train_batches=3", "logger=[mlflow]", "sweep_name=resume"]
    args += ["hydra.sweep.subdir=run"]  # one folder for both commands
    first = here("train.py", "-m", *args, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    # as if stopped after its first epoch: the same run, asked for two, resumes
    run_dir = tmp_path / "outputs" / "sweeps" / "resume" / "run"
    results = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").write_text(json.dumps({**results, "status": "interrupted"}))
    again = here("train.py", "-m", *args, "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tensorboard --logdir" not in again.stdout  # no TensorBoard in this set to point at
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    found = mlflow.search_runs(experiment_names=["resume"])
    assert len(found) == 1, "the resume made a second MLflow run"
    history = mlflow.MlflowClient().get_metric_history(found.run_id[0], "test/acc")
    assert sorted(m.step for m in history) == [1, 2]


def test_a_logger_whose_package_is_missing_is_one_line_before_anything_is_written(
    tmp_path, here, monkeypatch
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else find_spec(name, *a),
    )
    monkeypatch.chdir(tmp_path)
    out = here("train.py", "logger=[tensorboard,mlflow]")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: logger.mlflow: mlflow is not installed; pip install -e '.[mlflow]'"
    )
    assert not (tmp_path / "outputs").exists()


def test_an_mlflow_store_is_made_before_parallel_runs_would_race_for_it(tmp_path, make_cfg):
    from zeroinit.preflight import check_loggers

    cfg = make_cfg("logger=[mlflow]", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/m/ml.db")
    check_loggers(cfg)
    import sqlite3

    tables = sqlite3.connect(tmp_path / "m" / "ml.db").execute(
        "select name from sqlite_master where type='table'"
    )
    assert "experiments" in {name for (name,) in tables}


def mlflow_runs(tmp_path, experiment: str):
    """(active runs, deleted runs) of `experiment` in the outputs' MLflow store."""
    import mlflow
    from mlflow.entities import ViewType

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    active = mlflow.search_runs(experiment_names=[experiment])
    deleted = mlflow.search_runs(experiment_names=[experiment], run_view_type=ViewType.DELETED_ONLY)
    return active, deleted


def config_texts(run_dir) -> int:
    """How many config TEXT summaries TensorBoard reads in `run_dir` (set-aside files aside)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return sum(
        value.tag.startswith("config")
        for path in run_dir.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        for value in event.summary.value
    )


@pytest.mark.parametrize("lost", ["results.json", "last.ckpt"])
def test_a_run_folder_has_one_mlflow_run_whatever_was_set_aside(tmp_path, here, monkeypatch, lost):
    """results.json unreadable (set aside; the run resumes from its checkpoint) or the
    checkpoint gone (the run starts over): still one MLflow run in the default view, and one
    config text in TensorBoard."""
    import mlflow

    monkeypatch.chdir(tmp_path)
    args = ["+trainer.limit_train_batches=3", "logger=[tensorboard,mlflow]", "sweep_name=lost"]
    args += ["hydra.sweep.subdir=run"]
    first = here("train.py", "-m", *args, "trainer.max_epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "sweeps" / "lost" / "run"
    (old_id,) = mlflow_runs(tmp_path, "lost")[0].run_id
    if lost == "results.json":
        (run_dir / "results.json").write_text("{torn")
    else:
        (run_dir / "checkpoints" / "last.ckpt").unlink()
        results = json.loads((run_dir / "results.json").read_text())
        (run_dir / "results.json").write_text(json.dumps({**results, "status": "running"}))
    again = here("train.py", "-m", *args, "trainer.max_epochs=2")
    assert again.returncode == 0, again.stderr[-3000:]
    active, deleted = mlflow_runs(tmp_path, "lost")
    assert len(active) == 1, f"{len(active)} MLflow runs for one run folder"
    (run_id,) = active.run_id
    history = mlflow.MlflowClient().get_metric_history(run_id, "test/acc")
    assert sorted(m.step for m in history) == [1, 2]  # each epoch once
    assert json.loads((run_dir / "results.json").read_text())["logger_runs"]["mlflow"] == run_id
    if lost == "results.json":  # resumed: the same MLflow run goes on
        assert run_id == old_id and deleted.empty
    else:  # started over: the earlier attempt's run set aside, restorable
        assert list(deleted.run_id) == [old_id]
        assert deleted["tags.zeroinit.set_aside"][0].endswith(f"started over as {run_id}")
    assert config_texts(run_dir) == 1

"""A sweep checks what all its runs share before the first run (zeroinit.preflight), and a
failure every run would share, met during a run, stops the sweep once (zeroinit.sweep)."""

import json
import time
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from torchvision.datasets import CIFAR10

import fakenet
from fakedata import patch_cifar10_md5s, write_cifar10, write_mnist
from zeroinit import data
from zeroinit.errors import SweepError, UserError
from zeroinit.preflight import check_sweep, check_writable, job_configs
from zeroinit.sweep import (
    SWEEP_ID_ENV,
    is_sweep_wide,
    record_outcome,
    skip_if_stopped,
    stop_sweep,
    stopped,
    summarize,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sweep_config(tmp_path):
    """sweep_config(*overrides) -> (config, check): the config a `-m` command line gives the
    preflight, and check_sweep on it, inside the Hydra context it runs in."""
    context = initialize_config_dir(str(ROOT / "conf"), version_base="1.3")
    context.__enter__()

    def make(*overrides):
        return GlobalHydra.instance().hydra.compose_config(
            "train",
            ["trainer=cpu", f"paths.log_dir={tmp_path / 'logs'}", *overrides],
            run_mode=RunMode.MULTIRUN,
            with_log_configuration=False,
        )

    yield make
    context.__exit__(None, None, None)


# ------------------------------------------------------------------ before the first run
def test_every_dataset_of_the_sweep_is_checked_once(tmp_path, sweep_config):
    write_mnist(tmp_path / "data")
    cfg = sweep_config(
        "dataset=mnist,cifar10",
        "seed=0,1,2",
        "init=zero,pytorch",
        f"paths.data_dir={tmp_path / 'data'}",
        "dataset.download=false",
    )
    start = time.monotonic()
    configs = job_configs(cfg)  # 12 jobs, 2 datasets: 2 configs composed, not 12
    assert sorted(c.dataset.name for c in configs) == ["cifar10", "mnist"]
    with pytest.raises(SweepError) as e:
        check_sweep(cfg)
    assert time.monotonic() - start < 5  # seconds, where one run of the sweep takes minutes
    message = str(e.value)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    assert message.startswith(f"dataset=cifar10: missing in {folder}: data_batch_1, ")
    assert "`make data`" in message and "MNIST/raw" not in message and "\n" not in message
    assert not (tmp_path / "logs").exists()


def test_a_figure_preset_is_checked_without_composing_its_jobs(tmp_path, sweep_config, monkeypatch):
    write_cifar10(tmp_path / "data")
    patch_cifar10_md5s(monkeypatch, tmp_path / "data")
    cfg = sweep_config("experiment=fig08_cifar_fnn", f"paths.data_dir={tmp_path / 'data'}")
    start = time.monotonic()
    assert job_configs(cfg) == [cfg]  # models x inits x seeds: none of them changes the data
    assert check_sweep(cfg) == [("cifar10", str(tmp_path / "data"))]
    assert time.monotonic() - start < 5
    # read as a run reads it, and kept for the runs in this process
    assert data.read("cifar10", str(tmp_path / "data"), False)[0][0].shape == (20, 3, 32, 32)


def test_missing_dataset_is_downloaded_once_for_the_sweep(tmp_path, sweep_config, monkeypatch):
    source = tmp_path / "served"
    write_cifar10(source)
    patch_cifar10_md5s(monkeypatch, source)
    archive = fakenet.tar_gz(source / CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "tgz_md5", fakenet.md5(archive))
    cfg = sweep_config("dataset=cifar10", "seed=0,1,2", f"paths.data_dir={tmp_path / 'data'}")
    with fakenet.serve({CIFAR10.filename: archive}) as url:
        monkeypatch.setattr(CIFAR10, "url", url + CIFAR10.filename)
        check_sweep(cfg)
    assert (tmp_path / "data" / CIFAR10.base_folder / "test_batch").is_file()


def test_image_folder_without_a_folder_is_named(sweep_config):
    with pytest.raises(UserError, match="dataset.data_dir: not set"):
        check_sweep(sweep_config("dataset=image_folder", "seed=0,1"))


def test_an_output_folder_that_cannot_be_written_is_named(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError) as e:
        check_writable(tmp_path / "a_file" / "sweeps" / "default")
    assert str(e.value).startswith("paths.log_dir: ") and "not a folder" in str(e.value)
    check_writable(tmp_path / "new" / "sweeps" / "default")  # creatable: fine, and not created
    assert not (tmp_path / "new").exists()


def test_sweep_with_data_missing_creates_nothing_and_says_it_once(tmp_path, here):
    write_mnist(tmp_path / "data")  # mnist is there, cifar10 is not
    proc = here(
        "train.py",
        "-m",
        "trainer=cpu",
        "dataset=mnist,cifar10",
        "seed=0,1,2",
        "dataset.download=false",
        f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: dataset=cifar10: missing in ")
    assert "test_batch" in line and "`make data`" in line and "paths.data_dir" in line
    assert "Launching" not in proc.stdout + proc.stderr  # no run was started ...
    assert not (tmp_path / "logs").exists()  # ... nor any folder made


# ------------------------------------------------------------------ during a run
@pytest.mark.parametrize(
    "boom,said",
    [("NoSpaceAtEpochEnd", "No space left on device"), ("DeniedAtEpochEnd", "Permission denied")],
)
def test_a_failure_every_run_shares_stops_the_sweep_after_the_first_run(tmp_path, here, boom, said):
    proc = here(
        "train.py",
        "-m",
        "launcher=basic",  # one run at a time: the later two never start
        "trainer=cpu",
        "seed=0,1,2",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        f"+callbacks.boom._target_=fakedata.{boom}",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and said in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert "sweep: 3 runs: 1 failed, 2 not started" in proc.stdout
    assert said not in proc.stdout  # said once, on stderr
    runs = sorted(
        p.name
        for p in (tmp_path / "sweeps" / "default").iterdir()
        if p.is_dir() and not p.name.startswith(".")
    )
    assert len(runs) == 1 and runs[0].endswith("-s0"), runs  # s1, s2: never started


def test_sweep_wide_failures_are_told_apart_from_a_runs_own():
    import errno

    assert is_sweep_wide(SweepError("dataset=cifar10: missing"))
    assert is_sweep_wide(OSError(errno.ENOSPC, "No space left on device"))
    assert is_sweep_wide(PermissionError(errno.EACCES, "Permission denied"))
    assert not is_sweep_wide(UserError("model.activation: 'swish' is not one of ..."))
    assert not is_sweep_wide(OSError(errno.ENOENT, "No such file"))
    assert not is_sweep_wide(RuntimeError("CUDA out of memory"))


def test_a_removed_folder_is_sweep_wide_only_inside_the_running_sweep(tmp_path, monkeypatch):
    import errno

    from zeroinit.sweep import SWEEP_DIR_ENV

    sweep = tmp_path / "sweeps" / "s"
    gone = OSError(errno.ENOENT, "No such file", str(sweep / "run" / "results.json"))
    assert not is_sweep_wide(gone)  # no sweep running: a run's own failure
    monkeypatch.setenv(SWEEP_DIR_ENV, str(sweep))
    assert is_sweep_wide(gone)  # its run folder is gone
    data = OSError(errno.ENOENT, "No such file", str(tmp_path / "data" / "cat" / "1.jpg"))
    assert not is_sweep_wide(data)  # a dataset's missing file, its folder gone too: not this
    (sweep / "run").mkdir(parents=True)
    assert not is_sweep_wide(gone)  # the folder is there: a missing file of the run's own


def test_a_stopped_sweep_leaves_finished_runs_alone(tmp_path, monkeypatch):
    monkeypatch.setenv(SWEEP_ID_ENV, "test")
    finished, fresh = tmp_path / "a-s0", tmp_path / "a-s1"
    for run in (finished, fresh):
        (run / ".hydra").mkdir(parents=True)
        (run / "train.log").write_text("")
    (finished / "results.json").write_text(json.dumps({"status": "completed"}))
    assert stopped(tmp_path) is None and not skip_if_stopped(tmp_path, fresh)
    stop_sweep(tmp_path, SweepError("the data went away"))
    stop_sweep(tmp_path, SweepError("a second one"))  # the first message stays
    assert stopped(tmp_path) == "the data went away"
    assert skip_if_stopped(tmp_path, finished) and skip_if_stopped(tmp_path, fresh)
    assert (finished / "results.json").exists() and not fresh.exists()
    record_outcome(tmp_path, tmp_path / "b-s0", "failed", "SweepError: the data went away")
    outcomes = [json.loads(p.read_text()) for p in (tmp_path / ".outcomes" / "test").glob("*.json")]
    text, failed = summarize(outcomes, said="the data went away")
    assert text == "sweep: 3 runs: 1 failed, 2 not started" and failed


# ------------------------------------------------------------ bad values: one line, exit 2
@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["model.hidden=100"],
            "error: model.hidden: 100 is not allowed; allowed: a list of layer widths",
        ),
        (
            ["+lr=0.01"],
            "error: lr: not a key of this config, so nothing would read it (did you "
            "mean optimizer.lr?)",
        ),
        (
            ["+model.hiden=[100]"],
            "error: model.hiden: zeroinit.models.FNN takes no argument "
            "'hiden', so nothing would read it (did you mean model.hidden?)",
        ),
        (["+optimizer.lrr=0.1"], "(did you mean optimizer.lr?)"),
        (["+speed.compil=true"], "(did you mean speed.compile?)"),
        (["trainer.precision=7"], "error: trainer.precision: 7 is not allowed; allowed: 32-true"),
        (
            ["optimizer=sgd", "optimizer.momentum=-1"],
            "error: optimizer: torch.optim.SGD rejects these settings: ValueError: "
            "Invalid momentum",
        ),
    ],
)
@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_a_value_the_run_would_reject_is_one_line_before_any_folder(
    tmp_path, here, args, says, sweep
):
    out = here(
        "train.py", *(["-m", "seed=0,1"] if sweep else []), *args, f"paths.log_dir={tmp_path}"
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1].startswith("error: ")
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not [p for p in tmp_path.rglob("*") if p.is_dir() and p.name.endswith("-s0")]


def test_notes_and_tags_are_recorded_and_read_by_nothing(tmp_path, here):
    out = here(
        "train.py",
        "+notes.why=probe",
        "+tags.batch=3",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (results,) = tmp_path.rglob("results.json")
    config = json.loads(results.read_text())["config"]
    assert config["notes"] == {"why": "probe"} and config["tags"] == {"batch": 3}


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc on this system")
def test_a_folder_that_permissions_allow_but_writes_fail_in_is_named(tmp_path, here):
    out = here("train.py", "paths.log_dir=/proc/zeroinit-test")
    assert out.returncode == 2
    assert (
        out.stderr.strip()
        .splitlines()[-1]
        .startswith("error: paths.log_dir: the run writes to /proc/zeroinit-test/")
    )


def test_image_folder_with_an_empty_class_or_two_image_sizes_is_one_line(tmp_path, here):
    from fakedata import write_image_folder

    empty = tmp_path / "empty"
    write_image_folder(empty)
    (empty / "train" / "fox").mkdir()
    (empty / "test" / "fox").mkdir()
    sizes = tmp_path / "sizes"
    write_image_folder(sizes / "a", size=(8, 8))
    write_image_folder(sizes / "b", size=(16, 16))
    (sizes / "a" / "train").rename(sizes / "train")
    (sizes / "b" / "test").rename(sizes / "test")
    for root, says in (
        (empty, "Found no valid file for the classes fox"),
        (sizes, "the train images are (3, 8, 8) (C, H, W) but the test images (3, 16, 16)"),
    ):
        out = here(
            "train.py",
            "dataset=image_folder",
            f"dataset.data_dir={root}",
            f"paths.log_dir={tmp_path / 'logs'}",
        )
        assert out.returncode == 2, out.stderr[-2000:]
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: dataset.data_dir: ") and says in last
        assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("name", ["../../x", "", ".", "a/b", "x" * 300, "-flag"])
def test_a_sweep_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, here, name):
    proc = here(
        "train.py", "-m", f"sweep_name={name}", "seed=0,1", f"paths.log_dir={tmp_path / 'o'}"
    )
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "sweep_name" in errors[0], proc.stderr[-1500:]
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()  # nothing written


def test_an_unusable_mlflow_store_is_one_line_within_seconds(tmp_path, monkeypatch):
    """A read-only SQLite file (MLflow retried it for hours), a server that does not answer
    (minutes), MLflow 3's file store (refused): each a UserError naming the key."""
    import time

    from zeroinit.preflight import check_mlflow_uri

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    monkeypatch.setattr("os.access", lambda path, mode: False)  # root writes anything
    with pytest.raises(UserError, match=r"^logger.mlflow.tracking_uri: .* is read-only"):
        check_mlflow_uri("mlflow", f"sqlite:///{db}")
    monkeypatch.undo()
    start = time.monotonic()
    with pytest.raises(UserError, match=r"does not answer within 5 s"):
        check_mlflow_uri("mlflow", "http://127.0.0.1:9")
    assert time.monotonic() - start < 10
    with pytest.raises(UserError, match="file store"):
        check_mlflow_uri("mlflow", f"file://{tmp_path}/mlruns")


def test_wandb_online_without_its_server_is_one_line_within_seconds(make_cfg, monkeypatch):
    """logger.wandb.offline=false where W&B's server does not answer: one line, before any run
    waits for it; offline (the default) is never probed."""
    import time

    from zeroinit.preflight import check_loggers

    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^logger.wandb.offline: false, but http://127.0.0.1:9"):
        check_loggers(make_cfg("logger=wandb", "logger.wandb.offline=false"))
    assert time.monotonic() - start < 10
    check_loggers(make_cfg("logger=wandb"))  # offline: nothing to reach
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B will not reach for it either
    check_loggers(make_cfg("logger=wandb", "logger.wandb.offline=false"))


def test_sweeps_started_together_on_a_new_mlflow_store_both_get_it(tmp_path):
    """Four processes check the same new SQLite store at once (two sweeps started together):
    every one succeeds; without the lock they raced to create its tables."""
    import subprocess
    import sys

    code = (
        "import sys; from zeroinit.preflight import check_mlflow_uri; "
        "check_mlflow_uri('mlflow', sys.argv[1]); print('ok')"
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-500:] for _, err in outs]
    assert all(out.strip() == "ok" for out, _ in outs)

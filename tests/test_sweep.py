"""Sweeps that do not lose work: GPU slot assignment, the run lock, skip/resume after a kill,
failure isolation, divergence, the parallel and submitit launchers, the figure presets."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zeroinit.gpus import GpuSlot, default_gpu_lock_dir, slot_gpu
from zeroinit.lifecycle import RunLock
from zeroinit.run import build_data, build_net, compose
from zeroinit.slurm import rejection
from zeroinit.sweep import summarize

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {  # preset -> (dataset, epochs, runs in the sweep)
    "fig03_mnist_fnn": ("mnist", 10, 30),
    "fig04_mnist_fnn_bias_scale": ("mnist", 10, 30),
    "fig05_mnist_cnn": ("mnist", 15, 30),
    "fig06_mnist_cnn_bias_scale": ("mnist", 15, 30),
    "fig07_zero_mnist": ("mnist", 15, 15),
    "fig08_cifar_fnn": ("cifar10", 15, 30),
    "fig09_cifar_cnn": ("cifar10", 20, 30),
    "fig10_zero_cifar": ("cifar10", 20, 15),
    "fig11_resnet50": ("cifar10", 30, 15),
}


def train(*args, log_dir, timeout=600, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "src/train.py", *args, f"paths.log_dir={log_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kw,
    )


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def without_time(epochs):
    return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in epochs]


# ------------------------------------------------------------------ GPU slots, no GPU needed
def test_slot_gpu_fills_each_gpu_before_sharing():
    assert [slot_gpu(s, 4) for s in range(4)] == [0, 1, 2, 3]
    assert [slot_gpu(s, 2, runs_per_gpu=2) for s in range(4)] == [0, 1, 0, 1]
    with pytest.raises(ValueError):
        slot_gpu(2, 2, runs_per_gpu=1)


def test_concurrent_runs_get_distinct_gpus_and_wait_when_all_are_busy(tmp_path):
    slots = [GpuSlot(2, 1, lock_dir=tmp_path, poll_s=0.01) for _ in range(3)]
    assert sorted([slots[0].acquire(), slots[1].acquire()]) == [0, 1]
    with pytest.raises(TimeoutError):  # a third run may not double up on a GPU
        slots[2].acquire(timeout_s=0.05)
    gpu = slots[0].index
    slots[0].release()
    assert slots[2].acquire(timeout_s=1) == gpu  # ... but takes the one that frees up


def test_runs_per_gpu_allows_sharing(tmp_path):
    slots = [GpuSlot(1, 2, lock_dir=tmp_path, poll_s=0.01) for _ in range(3)]
    assert [slots[0].acquire(), slots[1].acquire()] == [0, 0]
    with pytest.raises(TimeoutError):
        slots[2].acquire(timeout_s=0.05)


def test_gpu_slots_are_exclusive_across_processes(tmp_path):
    held = GpuSlot(1, 1, lock_dir=tmp_path)
    held.acquire()
    code = (
        "from zeroinit.gpus import GpuSlot\n"
        f"try:\n    GpuSlot(1, 1, lock_dir={str(tmp_path)!r}, poll_s=0.01).acquire(0.1)\n"
        "except TimeoutError:\n    print('waited')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "waited"
    held.release()


def test_run_lock_is_exclusive_and_released(tmp_path):
    a, b = RunLock(tmp_path), RunLock(tmp_path)
    assert a.acquire()
    assert not b.acquire()
    a.release()
    assert b.acquire()
    b.release()


def test_summary_counts_outcomes_and_flags_failures():
    text, failed = summarize(
        [
            {"run": "a", "status": "completed", "error": None, "resumed": True},
            {"run": "b", "status": "skipped", "error": None},
            {"run": "c", "status": "failed", "error": "UserError: boom"},
        ]
    )
    assert failed
    assert "3 runs: 1 completed, 1 skipped (already finished), 1 failed" in text
    assert "1 of them resumed" in text and "failed: c: UserError: boom" in text
    assert summarize([{"run": "a", "status": "diverged", "error": None}])[1] is False
    text, unfinished = summarize(
        [
            {"run": "a", "status": "completed", "error": None},
            {"run": "b", "status": "interrupted", "error": "SIGTERM during epoch 3"},
        ]
    )
    assert unfinished  # the sweep is not done: exit 1, rerun to resume
    assert "2 runs: 1 completed, 1 interrupted (rerun the same command to resume)" in text
    assert "interrupted: b: SIGTERM during epoch 3" in text


# ------------------------------------------------------------------ presets and launchers
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_figure_presets_compose_with_the_papers_settings(name):
    dataset, epochs, n_runs = FIGURES[name]
    cfg = compose(f"experiment={name}", return_hydra_config=True)
    assert cfg.dataset.name == dataset and cfg.trainer.max_epochs == epochs
    assert cfg.sweep_name == name and cfg.batch_size == 128
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 0.001
    params = cfg.hydra.sweeper.params
    size = 1
    for key, value in params.items():
        size *= 5 if value == "range(5)" else len(str(value).split(","))
    assert params.seed == "range(5)" and size == n_runs
    if name == "fig11_resnet50":
        assert cfg.dataset.augment and list(cfg.dataset.normalize.mean) == [0.4914, 0.4822, 0.4465]
    elif "fig0" in name or name == "fig10_zero_cifar":
        assert not cfg.dataset.augment and cfg.dataset.normalize is None


def offline_examples():
    """The `... dataset=mnist5k ...` commands the presets' comments offer, as override lists."""
    for path in sorted((ROOT / "conf" / "experiment").glob("*.yaml")):
        text = path.read_text().replace("\n#      ", " ")  # a command continued on the next line
        for line in text.splitlines():
            if line.startswith("#   python src/train.py") and "dataset=mnist5k" in line:
                args = line.split("(")[0].split("#", 2)[1].split()[2:]  # no trailing comment
                yield pytest.param([a for a in args if a != "-m"], id=path.stem)


@pytest.mark.parametrize("overrides", list(offline_examples()))
def test_every_presets_offline_example_fits_the_embedded_digits(overrides, make_cfg):
    cfg = make_cfg(*overrides)
    data = build_data(cfg).load()  # the checks of the files against the config
    net = build_net(cfg, data)
    x = data.train_set[0][:2].float()
    assert net(x).shape == (2, 10)


@pytest.mark.parametrize("trainer,gpus", [("cpu", None), ("gpu", 1), ("default", 1)])
def test_slurm_preset_asks_for_a_gpu_only_when_the_trainer_uses_one(trainer, gpus):
    cfg = compose("launcher=slurm", f"trainer={trainer}", return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.zeroinit_slurm.SlurmLauncher"
    assert launcher.gpus_per_task == gpus and launcher.tasks_per_node == 1
    documented = {
        "partition",
        "account",
        "qos",
        "constraint",
        "timeout_min",
        "cpus_per_task",
        "mem_gb",
        "additional_parameters",
        "setup",
        "signal_delay_s",
        "max_num_timeout",
    }
    assert documented <= set(launcher)
    text = (ROOT / "conf" / "launcher" / "slurm.yaml").read_text()
    assert all(f"    {key}:" in text for key in documented)  # each set, with its comment


# sbatch 22.05's own words (slurm-wlm on Debian 12), as the SLURM test cluster says them.
SBATCH_SAYS = [
    ("sbatch: error: Invalid generic resource (gres) specification", "trainer=cpu"),
    (
        "sbatch: error: invalid partition specified: gpu\nsbatch: error: Batch job submission "
        "failed: Invalid partition name specified",
        "hydra.launcher.partition",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid feature specification",
        "hydra.launcher.constraint",
    ),
    (
        "sbatch: error: Memory specification can not be satisfied\nsbatch: error: Batch job "
        "submission failed: Requested node configuration is not available",
        "hydra.launcher.mem_gb",
    ),
    ("sbatch: error: Invalid --time specification", "hydra.launcher.timeout_min"),
    (
        "sbatch: unrecognized option '--mail=1'\nTry \"sbatch --help\" for more information",
        "hydra.launcher.additional_parameters",
    ),
    (
        "sbatch: error: Batch job submission failed: Invalid account or account/partition "
        "combination specified",
        "hydra.launcher.account",
    ),
    ("sbatch: error: Batch job submission failed: Invalid qos specification", "hydra.launcher.qos"),
]


@pytest.mark.parametrize("stderr,key", SBATCH_SAYS, ids=[k for _, k in SBATCH_SAYS])
def test_a_rejected_submission_names_the_key_to_change(stderr, key):
    line = rejection(stderr, gpus=1, accelerator="auto")
    assert line.startswith("error: SLURM rejected the sweep: ") and "\n" not in line
    assert key in line
    assert "sbatch:" not in line and "Batch job submission failed" not in line


def test_gpu_slots_are_per_slurm_job():
    # Two SLURM jobs on one node each see their own GPU as cuda:0: separate slot files.
    assert default_gpu_lock_dir({"TMPDIR": "/t"}) == Path("/t/zeroinit-gpus")
    assert default_gpu_lock_dir({"TMPDIR": "/t", "SLURM_JOB_ID": "42"}) == Path(
        "/t/zeroinit-gpus-slurm42"
    )


def test_parallel_sweep_on_cpu_runs_two_jobs(tmp_path):
    out = train(
        "-m",
        "launcher=parallel",
        "hydra.launcher.n_jobs=2",
        "seed=0,1",
        "trainer.max_epochs=1",
        log_dir=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted((tmp_path / "sweeps" / "default").glob("*-s[01]"))
    assert [results(r)["status"] for r in runs] == ["completed", "completed"]
    assert "sweep: 2 runs: 2 completed" in out.stdout
    assert results(runs[0])["epochs"] != results(runs[1])["epochs"]


def test_submitit_local_executor_runs_the_sweep(tmp_path):
    out = train("-m", "launcher=slurm_local", "seed=0", "trainer.max_epochs=1", log_dir=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = (tmp_path / "sweeps" / "default").glob("*-s0")
    assert results(run)["status"] == "completed"


# ------------------------------------------------------------------ failures and divergence
def test_a_failing_run_does_not_stop_the_sweep(tmp_path, here):
    out = here(
        "train.py",
        "-m",
        "model.activation=swish,elu",
        "trainer.max_epochs=1",
        f"paths.log_dir={tmp_path}",
    )
    assert out.returncode == 1
    assert "sweep: 2 runs: 1 completed, 1 failed" in out.stdout
    assert "model.activation" in out.stdout
    runs = list((tmp_path / "sweeps" / "default").glob("*activation=elu*"))
    assert len(runs) == 1 and results(runs[0])["status"] == "completed"
    assert not list((tmp_path / "sweeps" / "default").glob("*activation=swish*"))


def test_nan_loss_stops_the_run_as_diverged_and_the_sweep_goes_on(tmp_path, here):
    out = here(
        "train.py",
        "-m",
        "optimizer=sgd",
        "optimizer.lr=1e12,0.01",
        "trainer.max_epochs=3",
        f"paths.log_dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (bad,) = (tmp_path / "sweeps" / "default").glob("*lr=1000000000000*")
    (good,) = (tmp_path / "sweeps" / "default").glob("*lr=0.01*")
    r = results(bad)
    assert r["status"] == "diverged" and len(r["epochs"]) < 3  # stopped, curve so far kept
    assert results(good)["status"] == "completed" and len(results(good)["epochs"]) == 3
    assert "1 completed, 1 diverged" in out.stdout


# ------------------------------------------------------------------ kill, rerun, resume
def test_killed_sweep_resumes_and_never_overwrites_finished_runs(tmp_path, here):
    args = ["model=mnist_cnn", "+trainer.limit_train_batches=6", "trainer.max_epochs=4"]
    sweep = tmp_path / "sweeps" / "default"
    proc = subprocess.Popen(
        [sys.executable, "src/train.py", "-m", "seed=0,1", *args, f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    second = None
    deadline = time.time() + 600
    try:  # kill the sweep once the second run has checkpointed an epoch but not finished
        while time.time() < deadline:
            found = list(sweep.glob("*-s1"))
            if found and (found[0] / "checkpoints" / "last.ckpt").exists():
                second = found[0]
                if results(second)["status"] == "running":
                    break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert second is not None, "the sweep never reached its second run"
    first = next(sweep.glob("*-s0"))
    assert results(first)["status"] == "completed"
    first_bytes = (first / "results.json").read_bytes()
    assert results(second)["status"] == "running" and len(results(second)["epochs"]) < 4

    # the kill needs a process of its own; the rerun and the reference are the same script
    # run in this process (the same code path, without two more start-ups)
    out = here("train.py", "-m", "seed=0,1", *args, f"paths.log_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "1 skipped (already finished)" in out.stdout and "1 of them resumed" in out.stdout
    assert (first / "results.json").read_bytes() == first_bytes  # never overwritten
    resumed = results(second)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] >= 1

    # The resumed curve is the uninterrupted one: same batches, same optimizer state.
    ref = here("train.py", "seed=1", *args, f"paths.log_dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr[-2000:]
    (ref_dir,) = (tmp_path / "ref" / "runs").iterdir()
    assert without_time(resumed["epochs"]) == without_time(results(ref_dir)["epochs"])


# ------------------------------------------------------------------ unreadable files
SHORT_RUN = ["+trainer.limit_train_batches=3", "batch_size=32", "callbacks.diagnostics=null"]


def test_an_unreadable_checkpoint_is_set_aside_with_its_curve_and_the_run_starts_over(
    make_cfg, tmp_path, capsys
):
    from zeroinit.run import train_or_resume

    cfg = make_cfg(*SHORT_RUN, "trainer.max_epochs=2")
    outcome, whole = train_or_resume(cfg)
    assert outcome == "completed"
    # as after a kill in epoch 2 whose checkpoint was torn: `running`, last.ckpt 100 bytes
    saved = {**whole, "status": "running", "epochs": whole["epochs"][:1]}
    (tmp_path / "results.json").write_text(json.dumps(saved))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    capsys.readouterr()

    outcome, again = train_or_resume(cfg)
    said = capsys.readouterr().out
    (line,) = [s for s in said.splitlines() if s.startswith("unreadable")]
    assert line.startswith(f"unreadable checkpoint {ckpt} (") and "starting over" in line
    (ckpt_aside,) = ckpt.parent.glob("last.ckpt.unreadable-*")  # renamed, not deleted
    assert ckpt_aside.stat().st_size == 100 and ckpt_aside.name in line
    (curve_aside,) = tmp_path.glob("results.json.before-restart-*")  # the saved curve, kept
    assert json.loads(curve_aside.read_text())["epochs"] == saved["epochs"]
    assert outcome == "completed" and "resumed_from_epoch" not in again
    assert without_time(again["epochs"]) == without_time(whole["epochs"])
    assert train_or_resume(cfg)[0] == "skipped"  # no rerun meets the same bad file again


def test_an_unreadable_results_json_resumes_from_the_checkpoint_and_says_so(
    make_cfg, tmp_path, capsys
):
    from zeroinit.run import train_or_resume

    whole = train_or_resume(
        make_cfg(*SHORT_RUN, "trainer.max_epochs=2", f"paths.output_dir={tmp_path / 'whole'}")
    )[1]
    cfg = make_cfg(*SHORT_RUN, "trainer.max_epochs=1")
    train_or_resume(cfg)
    (tmp_path / "results.json").write_text('{"status": "runn')  # torn by hand or a bad copy
    capsys.readouterr()
    cfg.trainer.max_epochs = 2
    outcome, resumed = train_or_resume(cfg)
    (line,) = [s for s in capsys.readouterr().out.splitlines() if s.startswith("unreadable")]
    assert "resuming from" in line and "holds the curve" in line
    assert list(tmp_path.glob("results.json.unreadable-*"))
    assert outcome == "completed" and resumed["resumed_from_epoch"] == 1
    assert without_time(resumed["epochs"]) == without_time(whole["epochs"])


def test_position_says_which_run_of_how_many_and_the_sweeps_eta(monkeypatch):
    from zeroinit.sweep import SWEEP_RUNS_ENV, SWEEP_START_ENV, position

    monkeypatch.delenv(SWEEP_RUNS_ENV, raising=False)
    assert position(0) is None  # not a sweep (or a sweeper that cannot count its runs)
    monkeypatch.setenv(SWEEP_RUNS_ENV, "30")
    monkeypatch.setenv(SWEEP_START_ENV, str(time.time() - 120))
    assert position(0) == "run 1/30"
    assert position(6) == "run 7/30  (sweep: 6 done in 2m00s, ETA 8m00s)"
    assert position(15, 15) == "runs 16-30/30  (sweep: 15 done in 2m00s, ETA 2m00s)"


# ------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 300 kB tmpfs (root only): a run's first checkpoint (~5 MB for mnist_fnn) fills it."""
    import shutil

    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


@pytest.mark.parametrize(
    "launcher", [[], ["launcher=stacked", "hydra.launcher.stack_size=3"]], ids=["basic", "stacked"]
)
def test_a_full_disk_stops_the_sweep_in_one_line_and_the_rerun_finishes_it(
    small_disk, here, launcher
):
    args = [
        "-m",
        "seed=0,1,2",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "callbacks.diagnostics=null",
        *launcher,
        f"paths.log_dir={small_disk}",
    ]
    out = here("train.py", *args)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: No space left on device writing ")
    assert "Traceback" not in out.stdout + out.stderr
    assert "sweep: 3 runs: " in out.stdout
    files = [p for p in small_disk.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")]  # nothing half-written
    assert not [p for p in files if p.suffix == ".json" and p.stat().st_size == 0]
    for r in small_disk.rglob("results.json"):
        assert json.loads(r.read_text())["status"] in ("running", "failed")  # resumable
    subprocess.run(["mount", "-o", "remount,size=100m", str(small_disk)], check=True)
    again = here("train.py", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sweep: 3 runs: 3 completed" in again.stdout


@pytest.mark.parametrize(
    "launcher", [[], ["launcher=stacked", "hydra.launcher.stack_size=2"]], ids=["basic", "stacked"]
)
def test_a_sweep_folder_removed_while_it_runs_stops_it_in_one_line(tmp_path, here, launcher):
    """The folder deleted during the second seed's run (stack): one line, exit 2, no
    traceback, the runs after it not started; the same command then runs the sweep again."""
    folder = tmp_path / "sweeps" / "gone"
    args = [
        "-m",
        "seed=0,1,2",
        "init=zero,pytorch",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "callbacks.diagnostics=null",
        "sweep_name=gone",
        *launcher,
        f"paths.log_dir={tmp_path}",
    ]
    remove = [
        "+callbacks.rm._target_=fakedata.RemoveFolderAtEpochEnd",
        f"+callbacks.rm.folder={folder}",
        "+callbacks.rm.when=1",
        "+callbacks.rm.seed=${seed}",
    ]
    out = here("train.py", *args, *remove)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "was removed while the sweep wrote in it" in errors[0], errors
    assert "Traceback" not in out.stdout + out.stderr
    assert "nan" not in out.stdout
    (summary,) = [ln for ln in out.stdout.splitlines() if ln.startswith("sweep: 6 runs: ")]
    assert summary.endswith("not started"), summary
    again = here("train.py", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "sweep: 6 runs: 6 completed" in again.stdout


def test_a_full_disk_ends_a_single_run_in_one_line(small_disk, here):
    out = here(
        "train.py",
        "trainer.max_epochs=1",
        "callbacks.diagnostics=null",
        f"paths.log_dir={small_disk}",
    )
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: No space left on device writing ") and "Traceback" not in out.stderr
    )


def test_a_sweep_ends_saying_where_it_is_and_what_was_not_logged(tmp_path, monkeypatch):
    """next_steps: folder, report and TensorBoard commands; all skipped: says nothing
    trained; a logger added to a sweep whose runs had finished: says they were not logged."""
    from omegaconf import OmegaConf

    from zeroinit.sweep import next_steps

    monkeypatch.chdir(tmp_path)
    config = OmegaConf.create(
        {
            "hydra": {"sweep": {"dir": str(tmp_path / "outputs/sweeps/s")}},
            "logger": {"tensorboard": {}, "mlflow": {"tracking_uri": "x"}},
        }
    )
    skipped = [{"status": "skipped", "run": f"r{i}"} for i in range(3)]
    lines = next_steps(config, skipped)
    assert lines[0].startswith(
        "  nothing trained: all 3 runs had finished before in outputs/sweeps/s"
    )
    assert lines[1].startswith("  logger.mlflow: the 3 skipped runs were not logged")
    assert lines[-4:] == [
        "  folder:  outputs/sweeps/s",
        "  report:  python src/report.py outputs/sweeps/s",
        "  curves:  tensorboard --logdir outputs/sweeps/s",
        "  bands:   tensorboard --logdir outputs/sweeps/s/report/tensorboard  (after the report)",
    ]
    trained = next_steps(config, [{"status": "completed", "run": "r"}])
    assert len(trained) == 4  # nothing skipped: only the next steps
    (tmp_path / "outputs/sweeps/s").mkdir(parents=True)
    (tmp_path / "outputs/sweeps/s/search_best.json").write_text("{}")
    assert "  best trial: outputs/sweeps/s/search_best.json" in next_steps(config, [])

"""Stop signals (src/zeroinit/signals.py): a run that gets SIGTERM (SLURM's preemption and time
limit, scancel), SIGINT or SLURM's time-limit warning stops at a batch boundary, records itself
`interrupted`, and resumes to the same curve as an uninterrupted run. On a real SLURM:
tests/test_slurm.py."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest

from zeroinit.lifecycle import resume_checkpoint
from zeroinit.results import read_results
from zeroinit.run import run
from zeroinit.signals import Interrupted, StopOnSignal, should_requeue

ROOT = Path(__file__).resolve().parent.parent


def terminate_when(args, ready, signum=signal.SIGTERM, timeout=300):
    """Start `args` in the project root, send `signum` once `ready(process)` is true; returns
    (process, stdout, stderr) after it exits."""
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if ready(proc) if ready.__code__.co_argcount else ready():
                proc.send_signal(signum)
                break
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc, stdout, stderr


RUN = [
    "trainer.max_epochs=4",
    "+trainer.limit_train_batches=8",
    "batch_size=32",
    "callbacks.diagnostics=null",
    "seed=2",
]


class SendSignal(L.Callback):
    """Sends a signal to this very process at the end of one training batch, as SLURM would
    at any moment. (Before StopOnSignal in the callback list: it stops at this same batch.)"""

    def __init__(self, epoch: int, batch: int, signum: int = signal.SIGTERM):
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch + 1 == self.epoch and batch_idx + 1 == self.batch:
            os.kill(os.getpid(), self.signum)


def curve(results):
    return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in results["epochs"]]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR2])
def test_signal_stops_the_run_which_resumes_to_the_same_curve(make_cfg, tmp_path, signum):
    before = signal.getsignal(signum)
    whole = run(make_cfg(*RUN, f"paths.output_dir={tmp_path / 'whole'}"))
    assert signal.getsignal(signum) == before  # put back after a run that completed, too

    out = tmp_path / "stopped"
    sender = [
        "+callbacks.kill._target_=test_signals.SendSignal",
        "+callbacks.kill.epoch=3",
        "+callbacks.kill.batch=5",
        f"+callbacks.kill.signum={int(signum)}",
    ]
    with pytest.raises(Interrupted) as stop:
        run(make_cfg(*RUN, *sender, f"paths.output_dir={out}"))
    assert stop.value.signum == signum and stop.value.epoch == 3
    stopped = read_results(out)
    assert stopped["status"] == "interrupted"
    assert stopped["stopped_by"] == signal.Signals(signum).name
    assert len(stopped["epochs"]) == 2  # epoch 3 was in progress: dropped, redone on resume
    assert signal.getsignal(signum) == before  # handlers put back

    ckpt = resume_checkpoint(out)  # `interrupted` is resumable, like running and failed
    assert ckpt is not None
    resumed = run(make_cfg(*RUN, f"paths.output_dir={out}"), ckpt_path=ckpt)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 2
    assert curve(resumed) == curve(whole)


def test_a_second_sigint_stops_at_once():
    # Python's own Ctrl-C handler to start from, however pytest was started (a background
    # job of a non-interactive shell inherits SIGINT ignored, and Python then keeps it so)
    launched_with = signal.signal(signal.SIGINT, signal.default_int_handler)
    stop = StopOnSignal()
    stop.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # noted: the batch would finish
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Python's own handler again: now
            time.sleep(1)
    finally:
        stop.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, launched_with)


def test_only_the_time_limit_warning_requeues_and_only_while_requeues_are_left():
    job = {"SLURM_JOB_ID": "7", "ZEROINIT_MAX_REQUEUE": "3"}
    assert should_requeue(signal.SIGUSR2, {**job, "SLURM_RESTART_COUNT": "2"})
    assert not should_requeue(signal.SIGUSR2, {**job, "SLURM_RESTART_COUNT": "3"})
    assert should_requeue(signal.SIGUSR1, job)
    assert not should_requeue(signal.SIGTERM, job)  # preemption, scancel: SLURM decides
    assert not should_requeue(signal.SIGUSR2, {"ZEROINIT_MAX_REQUEUE": "3"})  # not in SLURM
    assert not should_requeue(signal.SIGUSR2, {"SLURM_JOB_ID": "7"})  # no launcher: no limit


def test_sigterm_to_a_sweep_records_interrupted_and_a_rerun_resumes(tmp_path, here):
    """As a person (or a scheduler) stops `python src/train.py -m ...`: exit 128+15, one line,
    and the same command resumes the run."""
    args = [
        sys.executable,
        "src/train.py",
        "-m",
        "trainer=cpu",
        "trainer.max_epochs=8",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    ]
    # signal the run once it has checkpointed an epoch
    proc, stdout, stderr = terminate_when(
        args, lambda proc: list(tmp_path.glob("sweeps/default/*/checkpoints/last.ckpt"))
    )
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    (run_dir,) = tmp_path.glob("sweeps/default/*-s0")
    assert f"interrupted: {run_dir} by SIGTERM during epoch" in stdout
    assert "rerun the same command to resume" in stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and 1 <= len(results["epochs"]) < 8

    again = here("train.py", *args[2:])  # the same command, run here
    assert again.returncode == 0, again.stderr[-2000:]
    assert "1 completed, 1 of them resumed from a checkpoint" in again.stdout
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and len(results["epochs"]) == 8


class SignalAtSetup(L.Callback):
    """Sends a signal to this process while the run sets up, before it trains."""

    def __init__(self, signum: int = signal.SIGINT):
        self.signum = signum

    def setup(self, trainer, pl_module, stage):
        os.kill(os.getpid(), self.signum)


def test_ctrl_c_before_training_exits_130_with_one_line_and_leaves_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src")])}
    proc = subprocess.run(
        [
            sys.executable,
            "src/train.py",
            "trainer=cpu",
            "+callbacks.kill._target_=test_signals.SignalAtSetup",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    (line,) = [s for s in proc.stdout.splitlines() if s.startswith("interrupted:")]
    assert "by SIGINT" in line and "nothing was saved yet" in line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no half-made run


def test_ctrl_c_on_a_single_run_says_how_to_resume_it_and_that_command_does(tmp_path, here):
    args = [
        sys.executable,
        "src/train.py",
        "trainer=cpu",
        "trainer.max_epochs=8",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    ]
    proc, stdout, stderr = terminate_when(
        args, lambda proc: list(tmp_path.rglob("last.ckpt")), signum=signal.SIGINT
    )
    assert proc.returncode == 130, stderr[-2000:]
    (line,) = [s for s in stdout.splitlines() if s.startswith("interrupted:")]
    assert "by SIGINT during epoch" in line
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert read_results(run_dir)["status"] == "interrupted"
    command = shlex.split(line.split("to resume: ", 1)[1])
    assert command[:2] == ["python", "src/train.py"]
    assert command[-1] == f'hydra.run.dir="{run_dir}"'
    again = here("train.py", *command[2:])  # the printed command, as a shell splits it
    assert again.returncode == 0, again.stderr[-2000:]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["resumed_from_epoch"] >= 1
    assert len(results["epochs"]) == 8 and list((tmp_path / "runs").iterdir()) == [run_dir]


def test_ctrl_c_stops_a_sweep_with_its_summary_so_far(tmp_path):
    args = [
        sys.executable,
        "src/train.py",
        "-m",
        "launcher=basic",  # one run at a time: the second is running when Ctrl-C comes
        "trainer=cpu",
        "seed=0,1,2",
        "trainer.max_epochs=8",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    ]
    proc, stdout, stderr = terminate_when(
        args,
        lambda proc: list(tmp_path.glob("sweeps/default/*-s1/checkpoints/last.ckpt")),
        signum=signal.SIGINT,
    )
    assert proc.returncode == 130, stderr[-2000:]
    assert "run 1/3" in stdout and "run 2/3  (sweep: 1 done in " in stdout
    assert (
        "sweep: 3 runs: 1 completed, 1 interrupted (rerun the same command to resume), "
        "1 not started" in stdout
    )
    assert "interrupted: " in stdout and "SIGINT during epoch" in stdout
    assert not list(tmp_path.glob("sweeps/default/*-s2"))  # the sweep stopped

"""Stop signals: finish the batch, keep what is saved, say so, leave (and requeue if asked).

What sends them: SLURM sends SIGTERM at a job's time limit, on preemption, `scancel` and
`scontrol requeue` (then SIGKILL, KillWait seconds later: 30 by default), and with
`sbatch --signal` an earlier warning (submitit asks for SIGUSR2 `signal_delay_s` before the
limit); a person sends SIGINT (Ctrl-C).

What a run does (the `StopOnSignal` callback):
  1. the handler only notes the signal: the training step in progress finishes;
  2. at the next training batch end the run raises `Interrupted`, dropping the epoch in
     progress: an epoch is the unit of exact resume (the same batches, the same optimizer
     state), and the last finished one is on disk. A signal during the test-split evaluation
     that closes an epoch lets the epoch finish (seconds) and stops after its checkpoint;
  3. results.json says `interrupted` (`stopped_by`: the signal), the sweep records it;
  4. `leave()` prints one line and exits 128 + signal number, without a submitit result, so
     that a requeued SLURM job is still waited for. After the time-limit warning (SIGUSR1/2)
     a SLURM job first requeues itself, at most ZEROINIT_MAX_REQUEUE times in all
     (conf/launcher/slurm.yaml: max_num_timeout).
A rerun of the same sweep command, or the requeued job, resumes the run from last.ckpt.

A second stop signal does what it would have done without this module (Ctrl-C twice: stop
at once).
"""

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
WARNING_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)  # sbatch --signal: the time limit is near
MAX_REQUEUE_ENV = "ZEROINIT_MAX_REQUEUE"


class Interrupted(BaseException):
    """A stop signal arrived; the run stopped at a batch boundary. A BaseException, like
    KeyboardInterrupt: a sweep's per-run `except Exception` (and Hydra's, and submitit's)
    must not turn it into a failed run and go on to the next one."""

    def __init__(self, signum: int, epoch: int | None):
        self.signum, self.epoch = signum, epoch  # epoch: the one in progress, from 1
        name = signal.Signals(signum).name
        super().__init__(f"{name} during epoch {epoch}" if epoch else name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


# What a stopped fit raises: ours, or Lightning's own where it saw SIGTERM before we did.
STOPPED = (Interrupted, SIGTERMException)


def stopped_by(exception: BaseException) -> str | None:
    """The stop signal behind an exception that ended a fit, or None if it was a failure.
    Lightning raises its own SIGTERMException where it checks for SIGTERM before we do."""
    if isinstance(exception, Interrupted):
        return exception.name
    if isinstance(exception, SIGTERMException):
        return "SIGTERM"
    if isinstance(exception, KeyboardInterrupt):  # a second Ctrl-C
        return "SIGINT"
    return None


class StopOnSignal(L.Callback):
    """Turns SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 into a stop at the next batch boundary.

    Installed at train start, after Lightning registers its own handlers (which, for SIGUSR1
    under SLURM, would save an extra checkpoint and requeue on their own); put back at train
    end or on an exception, before Lightning's teardown puts back the ones it found."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    # ---------------------------------------------------------------- handlers
    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        self.restore()  # a second signal: whatever it would have done without us, now
        signal.raise_signal(signum)

    def install(self):
        self.signum = None
        if threading.current_thread() is not threading.main_thread():
            return  # Python takes signal handlers in the main thread only
        for s in STOP_SIGNALS:
            self._previous.setdefault(s, signal.signal(s, self._handle))

    def restore(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # ---------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer, pl_module):
        self.install()

    def _check(self, trainer):
        stop = self.signum is not None
        if trainer.world_size > 1:  # every rank stops at the same batch, or DDP hangs
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            print(
                f"stopping: {signal.Signals(self.signum or signal.SIGTERM).name} received",
                file=sys.stderr,
                flush=True,
            )
            raise Interrupted(self.signum or signal.SIGTERM, trainer.current_epoch + 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._check(trainer)

    def on_train_epoch_start(self, trainer, pl_module):
        # A signal during the closing evaluation: the epoch's results.json and checkpoint
        # (a Lightning Checkpoint, run after every other callback) are written by now.
        self._check(trainer)

    def on_train_end(self, trainer, pl_module):
        self.restore()  # before Lightning's teardown, which then restores what it found

    def on_fit_end(self, trainer, pl_module):
        if self.signum is not None:  # came after the last check: the run is complete, and
            signal.raise_signal(self.signum)  # the process now does what it would have done

    def on_exception(self, trainer, pl_module, exception):
        self.restore()


def _raise_interrupted(signum, frame):
    raise Interrupted(signum, None)


def interrupt_on_ctrl_c() -> None:
    """Outside training (start-up, data loading, between a sweep's runs) Ctrl-C stops at
    once, but as an `Interrupted`, so it ends like a stop during training: what was kept, one
    line, exit 130. Python's own KeyboardInterrupt would end in a traceback and exit 1, and
    Lightning turns one met inside `fit` into exit 1 too. StopOnSignal takes over while a
    run trains and puts this back after (a second Ctrl-C then stops at once through it)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _raise_interrupted)


@contextlib.contextmanager
def forwarded_to(children):
    """While it lasts, a stop signal this process receives goes to the processes
    `children()` lists (a stacked sweep's workers) instead of stopping it: they stop at a batch
    boundary, record their runs `interrupted` and return, and this process waits for them and
    then says so. Yields the signals received. (Ctrl-C in a terminal reaches the workers by
    itself; `kill <pid>` or a scheduler's signal to this process alone would not.)"""
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        for pid in children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def child_processes(name: str, parent: int | None = None) -> list[int]:
    """The children of `parent` (this process by default) whose command line holds `name`
    (Linux /proc)."""
    wanted, out = str(parent or os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if fields[1] == wanted and name in (stat.parent / "cmdline").read_text():
                out.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return out


# ---------------------------------------------------------------- after the run stopped
def slurm_job_id() -> str | None:
    """This job's id as scontrol takes it (array task: <array job>_<task>)."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def should_requeue(signum: int, env=os.environ) -> bool:
    """After the time-limit warning, a SLURM job requeues itself while it has requeues left.
    SIGTERM never does: SLURM requeues preempted jobs itself where the partition says so, and
    a person's scancel means stop."""
    if signum not in WARNING_SIGNALS or not env.get("SLURM_JOB_ID"):
        return False
    limit = int(env.get(MAX_REQUEUE_ENV) or 0)
    return int(env.get("SLURM_RESTART_COUNT") or 0) < limit


RESUME_HINT = "rerun the same command to resume"


def leave(stop: BaseException, run_dir, hint: str = RESUME_HINT, then: str | None = None):
    """The end of a process whose run was interrupted: one line (`hint`: how to go on), maybe
    a requeue, `then` (a sweep's summary so far), and exit 128 + signal. Never returns."""
    name = stopped_by(stop) or "SIGTERM"
    signum = signal.Signals[name].value
    epoch = getattr(stop, "epoch", None)  # None: Lightning's SIGTERMException, Ctrl-C at once
    during = ""
    if epoch:
        kept = (
            "no epoch finished yet"
            if epoch == 1
            else "epoch 1 kept"
            if epoch == 2
            else f"epochs 1-{epoch - 1} kept"
        )
        during = f" during epoch {epoch} ({kept})"
    if should_requeue(signum):
        job = slurm_job_id()
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        hint = (
            f"SLURM job {job} requeued: it resumes when it starts again"
            if not done.returncode
            else f"requeue of SLURM job {job} failed ({done.stderr.strip()}); {hint}"
        )
    print(f"interrupted: {run_dir} by {name}{during}; {hint}", flush=True)
    if then:
        print(then, flush=True)
    raise SystemExit(128 + signum)

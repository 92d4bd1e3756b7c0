"""Sweeps that do not lose work: skip finished runs, resume interrupted ones, one run per GPU,
and a summary of the whole sweep at its end.

A run's directory is named by its configuration and seed (conf/hydra/default.yaml), so
rerunning a sweep command finds the runs it already made:
  completed / diverged            -> skipped: a finished result is never overwritten
  running / failed / interrupted  -> resumed from checkpoints/last.ckpt (or restarted if none)
A lock file in the run directory keeps two processes from training the same run at once.
A failure that every run would share (zeroinit.errors.SweepError, a full disk) stops the sweep
at the first run that meets it; the sweep's end says it once, exit code 2.
"""

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from zeroinit.checkpoint import set_aside, unreadable
from zeroinit.errors import SweepError
from zeroinit.results import FILENAME, read_results, write_json_atomic
from zeroinit.signals import slurm_job_id

FINISHED = ("completed", "diverged")
RESUMABLE = ("running", "failed", "interrupted")  # killed, crashed, stopped by a signal
SWEEP_ID_ENV = "ZEROINIT_SWEEP_ID"  # <time>-<pid of the process that started it>
SWEEP_RUNS_ENV = "ZEROINIT_SWEEP_RUNS"  # how many runs the sweep launches, if known
SWEEP_START_ENV = "ZEROINIT_SWEEP_START"  # its start (time.time())
CHECKPOINT = Path("checkpoints") / "last.ckpt"


# ---------------------------------------------------------------- skip / resume
def previous_status(run_dir: Path) -> str | None:
    try:
        return read_results(run_dir).get("status")
    except (OSError, ValueError):  # no results.json yet (or unreadable: start afresh)
        return None


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to resume from, if the run was interrupted or failed after an epoch.

    Neither file is ever deleted, and no rerun meets the same bad file twice:
    - an unreadable checkpoint is set aside (renamed), with the results.json that goes with
      it (its curve kept), and the run starts over; one line says so;
    - an unreadable results.json next to a readable checkpoint is set aside and the run
      resumes from the checkpoint, which holds the curve; one line says so."""
    run_dir = Path(run_dir)
    ckpt, results = run_dir / CHECKPOINT, run_dir / FILENAME
    status = previous_status(run_dir)
    results_unreadable = status is None and results.exists()
    if not ckpt.exists() or not (status in RESUMABLE or results_unreadable):
        return None
    problem = unreadable(ckpt)
    if problem:
        ckpt_aside = set_aside(ckpt, "unreadable")
        kept = ""
        if results.exists():  # its curve belongs to the checkpoint set aside: keep it too
            kept = f", {results.name} as {set_aside(results, 'before-restart').name}"
        print(
            f"unreadable checkpoint {ckpt} ({problem}): set aside as {ckpt_aside.name}{kept};"
            " starting over from epoch 1",
            flush=True,
        )
        return None
    if results_unreadable:
        aside = set_aside(results, "unreadable")
        print(
            f"unreadable {results} (set aside as {aside.name}): resuming from {ckpt}, "
            "which holds the curve",
            flush=True,
        )
    return ckpt


class RunLock:
    """An exclusive flock on <run_dir>/.lock, held while the run trains. The kernel drops it
    when the process dies, so a killed run never leaves a stale lock behind."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.file = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.close()
            self.file = None
            return False
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{socket.gethostname()} {os.getpid()}\n")
        self.file.flush()
        return True

    def release(self):
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None


# ---------------------------------------------------------------- GPU slots
def slot_gpu(slot: int, n_gpus: int, runs_per_gpu: int = 1) -> int:
    """Slot k of n_gpus * runs_per_gpu slots -> its GPU. Slots fill GPU 0, 1, ... first, so
    with runs_per_gpu=1 no two concurrent runs share a GPU."""
    if not 0 <= slot < n_gpus * runs_per_gpu:
        raise ValueError(f"slot {slot} out of range for {n_gpus} GPUs x {runs_per_gpu}")
    return slot % n_gpus


class GpuSlot:
    """Claims one of n_gpus * runs_per_gpu slots by flock on files in `lock_dir` (shared by
    every process of the machine: joblib workers, several sweeps); waits while all are busy."""

    def __init__(self, n_gpus: int, runs_per_gpu: int = 1, lock_dir=None, poll_s: float = 1.0):
        if n_gpus < 1 or runs_per_gpu < 1:
            raise ValueError("n_gpus and runs_per_gpu must be >= 1")
        self.n_gpus, self.runs_per_gpu, self.poll_s = n_gpus, runs_per_gpu, poll_s
        self.lock_dir = Path(lock_dir or default_gpu_lock_dir())
        self.file = self.slot = self.index = None

    def acquire(self, timeout_s: float | None = None) -> int:
        """Block until a slot is free; return its GPU index."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        while True:
            for slot in range(self.n_gpus * self.runs_per_gpu):
                f = open(self.lock_dir / f"slot{slot}.lock", "a")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                self.file, self.slot = f, slot
                self.index = slot_gpu(slot, self.n_gpus, self.runs_per_gpu)
                return self.index
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"no free GPU slot in {self.lock_dir} after {timeout_s}s")
            time.sleep(self.poll_s)

    def release(self):
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = self.slot = self.index = None


def default_gpu_lock_dir(env=os.environ) -> Path:
    """Shared by the processes of one machine, but per SLURM job: two jobs on one node each
    see their own GPUs as cuda:0.., so one machine-wide slot0.lock would make the second job
    wait for the first to end."""
    job = env.get("SLURM_JOB_ID")
    name = f"zeroinit-gpus-slurm{job}" if job else "zeroinit-gpus"
    return Path(env.get("TMPDIR", "/tmp")) / name


# ---------------------------------------------------------------- sweep summary
def outcome_dir(sweep_dir) -> Path | None:
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    return Path(sweep_dir) / ".outcomes" / sweep_id if sweep_id else None


def record_outcome(
    sweep_dir, run_dir, status: str, error: str | None = None, resumed: bool = False
) -> None:
    """Called by each job of a sweep (in whatever process runs it): what became of it."""
    out = outcome_dir(sweep_dir)
    if out is None:
        return
    entry = {
        "run": Path(run_dir).name,
        "status": status,
        "error": error,
        "resumed": resumed,
        "slurm_job": slurm_job_id(),
    }  # lets the launcher tell which jobs reported
    try:  # whole or not at all: a full disk leaves no empty record behind
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / f"{Path(run_dir).name}.json", entry)
    except OSError:
        if status != "failed" or not is_disk_error(error):
            raise


def summarize(outcomes: list[dict], said: str | None = None) -> tuple[str, bool]:
    """One summary line (+ one line per failure or interruption, but failures whose error is
    `said`, printed once already); True if any run failed or was interrupted (the sweep is
    not done)."""
    counts = {}
    for o in outcomes:
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    labels = {
        "skipped": "skipped (already finished)",
        "busy": "busy (running elsewhere)",
        "interrupted": "interrupted (rerun the same command to resume)",
    }
    parts = [
        f"{counts[k]} {labels.get(k, k)}"
        for k in (
            "completed",
            "diverged",
            "skipped",
            "busy",
            "interrupted",
            "failed",
            "not started",
        )
        if counts.get(k)
    ]
    resumed = sum(1 for o in outcomes if o.get("resumed"))
    if resumed:
        parts.append(f"{resumed} of them resumed from a checkpoint")
    lines = [f"sweep: {len(outcomes)} runs: " + ", ".join(parts)]
    failed = [o for o in outcomes if o["status"] == "failed"]
    lines += [
        f"  failed: {o['run']}: {o['error']}"
        for o in failed
        if not (said and said in str(o["error"]))
    ]
    interrupted = [o for o in outcomes if o["status"] == "interrupted"]
    lines += [f"  interrupted: {o['run']}: {o['error']}" for o in interrupted]
    return "\n".join(lines), bool(failed or interrupted)


def started_here() -> bool:
    """Whether this process started the sweep (the basic and stacked launchers run its jobs
    in it; joblib workers and SLURM jobs are other processes)."""
    return os.environ.get(SWEEP_ID_ENV, "").rsplit("-", 1)[-1] == str(os.getpid())


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def position(done: int, count: int = 1) -> str | None:
    """'run 7/30' (or 'runs 7-21/30' for a stack) for the next `count` runs after `done`, with
    the time so far and the sweep's ETA at the pace so far; None outside a sweep."""
    total = int(os.environ.get(SWEEP_RUNS_ENV) or 0)
    if not total:
        return None
    runs = f"run {done + 1}/{total}" if count == 1 else f"runs {done + 1}-{done + count}/{total}"
    start = float(os.environ.get(SWEEP_START_ENV) or 0)
    if not done or not start:
        return runs
    elapsed = time.time() - start
    return (
        f"{runs}  (sweep: {done} done in {_duration(elapsed)}, "
        f"ETA {_duration(elapsed / done * (total - done))})"
    )


def summary_so_far(sweep_dir, current: dict | None = None, said: str | None = None) -> str:
    """The sweep's summary when a stop signal or a full disk ends it early: what each run
    that started became (`current`: {run name: outcome} of runs whose records could not be
    written), and how many did not start."""
    out = outcome_dir(sweep_dir)
    outcomes = []
    if out is not None and out.is_dir():
        outcomes = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    written = {o["run"] for o in outcomes}
    outcomes += [{"run": run, **o} for run, o in (current or {}).items() if run not in written]
    total = int(os.environ.get(SWEEP_RUNS_ENV) or 0)
    outcomes += [{"run": "", "status": "not started"}] * max(0, total - len(outcomes))
    return summarize(outcomes, said=said)[0]


# ---------------------------------------------------------------- sweep-wide failures
# A full disk, an exhausted quota or a read-only file system fails every later run just the same.
SWEEP_WIDE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
STOPPED = "stopped.txt"  # in the sweep's outcome folder: the message that stopped it


def is_sweep_wide(e: BaseException) -> bool:
    return isinstance(e, SweepError) or is_disk_error(e)


def is_disk_error(e) -> bool:
    """A full disk, an exhausted quota, a read-only file system (an exception, or the text a
    run recorded of one)."""
    if isinstance(e, str):
        return any(os.strerror(n) in e for n in SWEEP_WIDE_ERRNOS)
    return isinstance(e, OSError) and e.errno in SWEEP_WIDE_ERRNOS


def stop_on_disk_error(sweep_dir, run_dir, e: OSError, current: dict | None = None) -> None:
    """A disk error in a sweep run by this process: nothing later could be written (Hydra's
    own files for the next run would fail first), so the sweep stops here, in one line and
    its summary so far; exit 2. The runs that were training keep their last complete
    results.json and checkpoint: the same command resumes them once there is room."""
    print(
        f"error: {e.strerror or e} writing {run_dir}: the sweep stops here; free space (or "
        "fix the folder) and run the same command to resume",
        file=sys.stderr,
        flush=True,
    )
    print(summary_so_far(sweep_dir, current, said=str(e)), flush=True)  # the error: said above
    raise SystemExit(2)


def stop_sweep(sweep_dir, e: BaseException) -> None:
    """Called by the run that met `e`: the sweep's later runs will not start, and its end
    prints the message. The first message stays (parallel runs may meet it together)."""
    out = outcome_dir(sweep_dir)
    try:
        if out is None:  # not started by SweepSummary: nothing to stop, say it here
            raise OSError
        out.mkdir(parents=True, exist_ok=True)
        with open(out / STOPPED, "x") as f:
            f.write(str(e))
    except FileExistsError:
        pass
    except OSError:  # the full disk itself: say it here, the sweep's end cannot read it back
        print(f"error: {e}", file=sys.stderr, flush=True)


def stopped(sweep_dir) -> str | None:
    """The message that stopped this sweep, if one did."""
    out = outcome_dir(sweep_dir)
    try:
        return (out / STOPPED).read_text() if out is not None else None
    except OSError:
        return None


def skip_if_stopped(sweep_dir, run_dir) -> bool:
    """At the start of a run: True if the sweep was stopped, after removing what Hydra made
    for this run (its .hydra/ and log, nothing of a run that trained before) and recording
    it as not started."""
    if stopped(sweep_dir) is None:
        return False
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(
        p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()
    ):
        shutil.rmtree(run_dir, ignore_errors=True)
    record_outcome(sweep_dir, run_dir, "not started")
    return True


class SweepSummary(Callback):
    """Hydra callback: tags the sweep with an id that its jobs inherit, and at its end prints
    what happened to every run and exits non-zero if any failed or was interrupted (2 if a
    failure that every run shares stopped it)."""

    def on_multirun_start(self, config, **kwargs):
        from zeroinit.preflight import sweep_size

        os.environ[SWEEP_ID_ENV] = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.environ[SWEEP_RUNS_ENV] = str(sweep_size(config) or "")
        os.environ[SWEEP_START_ENV] = str(time.time())

    def on_multirun_end(self, config, **kwargs):
        out = outcome_dir(config.hydra.sweep.dir)
        outcomes = []
        if out is not None and out.is_dir():
            outcomes = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
        message = stopped(config.hydra.sweep.dir)
        text, failed = summarize(outcomes, said=message)
        if message is not None:
            print(f"error: {message}", file=sys.stderr, flush=True)
            text += "\n  stopped after the first run that met the error above: every run would"
            text += " meet it; once it is fixed, the same command resumes the sweep"
        print(text, flush=True)
        if message is not None:
            raise SystemExit(2)
        if failed:
            raise SystemExit(1)

"""A sweep as a whole: what became of each run (outcome records, in whatever process ran it),
its position and ETA, the summary at its end, and the failures that every run would share
(zeroinit.errors.SweepError, a full disk), which stop the sweep at the first run that meets
them and are said once, exit code 2. (One run's own lifecycle, skip / lock / resume, is
zeroinit.lifecycle; GPU slots are zeroinit.gpus.)
"""

import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from zeroinit.errors import SweepError
from zeroinit.files import shown_path
from zeroinit.results import write_json_atomic
from zeroinit.signals import slurm_job_id

SWEEP_ID_ENV = "ZEROINIT_SWEEP_ID"  # <time>-<pid of the process that started it>
SWEEP_RUNS_ENV = "ZEROINIT_SWEEP_RUNS"  # how many runs the sweep launches, if known
SWEEP_DIR_ENV = "ZEROINIT_SWEEP_DIR"  # the sweep's folder, absolute (folder_removed)
SWEEP_START_ENV = "ZEROINIT_SWEEP_START"  # its start (time.time())


# ---------------------------------------------------------------- sweep summary
def outcome_dir(sweep_dir) -> Path | None:
    sweep_id = os.environ.get(SWEEP_ID_ENV)
    return Path(sweep_dir) / ".outcomes" / sweep_id if sweep_id else None


def record_outcome(sweep_dir, run_dir, status: str, error=None, resumed: bool = False) -> None:
    """Called by each job of a sweep (in whatever process runs it): what became of it.
    `error`: the exception that ended it (or a text where there is none)."""
    out = outcome_dir(sweep_dir)
    if out is None:
        return
    entry = {
        "run": Path(run_dir).name,
        "status": status,
        "error": f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error,
        "resumed": resumed,
        "slurm_job": slurm_job_id(),
    }  # lets the launcher tell which jobs reported
    try:  # whole or not at all: a full disk leaves no empty record behind
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / f"{Path(run_dir).name}.json", entry)
    except OSError as e:
        if status != "failed" or not is_disk_error(e):  # the disk that failed the run
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


def next_steps(config, outcomes: list[dict]) -> list[str]:
    """Where the sweep is and what to run next; and, where nothing trained, why (a sweep
    folder's finished runs are skipped: a new experiment needs a new sweep_name)."""
    where = shown_path(config.hydra.sweep.dir)
    lines = []
    skipped = sum(o["status"] == "skipped" for o in outcomes)
    if outcomes and skipped == len(outcomes):
        lines.append(
            f"  nothing trained: all {skipped} runs had finished before in {where} "
            "(the same command resumes a sweep; another experiment needs its own "
            "sweep_name=<name>)"
        )
    for name in config.get("logger") or {}:
        if skipped and config.logger[name] and name not in ("tensorboard", "csv"):
            lines.append(
                f"  logger.{name}: the {skipped} skipped runs were not logged to it (they "
                "had finished before); to log them, run the command again with a new "
                "sweep_name=<name>"
            )
    best = Path(config.hydra.sweep.dir) / "search_best.json"
    if best.exists():
        lines.append(f"  best trial: {shown_path(best)}")
    lines += [f"  folder:  {where}", f"  report:  python src/report.py {where}"]
    if (config.get("logger") or {}).get("tensorboard") is not None:
        lines.append(f"  curves:  tensorboard --logdir {where}")
        bands = f"{where}/report/tensorboard"  # the report's: one TensorBoard run per line
        lines.append(f"  bands:   tensorboard --logdir {bands}  (after the report)")
    return lines


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
# A full disk, an exhausted quota or a read-only file system fails every later run just the
# same; so, most often, does a permission lost while the sweep runs (a folder made read-only,
# another user's files): one line and a stop beat a traceback per run.
SWEEP_WIDE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}
STOPPED = "stopped.txt"  # in the sweep's outcome folder: the message that stopped it


def is_sweep_wide(e: BaseException) -> bool:
    return isinstance(e, SweepError) or is_disk_error(e)


def is_disk_error(e: BaseException) -> bool:
    """A full disk, an exhausted quota, a read-only file system, a permission denied, a
    folder removed while the sweep wrote in it."""
    return isinstance(e, OSError) and (e.errno in SWEEP_WIDE_ERRNOS or folder_removed(e))


def folder_removed(e: OSError) -> bool:
    """A file of the running sweep's folder not found because its folder is gone (the sweep
    or a run folder deleted while the sweep ran): every later write there fails the same
    way. A missing file elsewhere (a dataset's, a bug's) is not this."""
    sweep_dir = os.environ.get(SWEEP_DIR_ENV)
    if e.errno != errno.ENOENT or not e.filename or not sweep_dir:
        return False
    path = Path(os.path.abspath(os.fsdecode(e.filename)))
    return Path(sweep_dir) in path.parents and not path.parent.is_dir()


def stop_on_disk_error(sweep_dir, run_dir, e: OSError, current: dict | None = None) -> None:
    """A disk error in a sweep run by this process: nothing later could be written (Hydra's
    own files for the next run would fail first), so the sweep stops here, in one line and
    its summary so far; exit 2. The runs that were training keep their last complete
    results.json and checkpoint: the same command resumes them once there is room."""
    if folder_removed(e):
        gone = Path(os.fsdecode(e.filename)).parent
        while not gone.parent.is_dir() and gone.parent != gone:
            gone = gone.parent
        line = (
            f"error: {shown_path(gone)} was removed while the sweep wrote in it: the sweep "
            "stops here; run the same command to start again (what it had finished in folders "
            "still there is kept)"
        )
    else:
        fix = (
            "fix the permissions"
            if e.errno in PERMISSION_ERRNOS
            else "free space (or fix the folder)"
        )
        where = f" ({e.filename})" if e.filename and str(e.filename) != str(run_dir) else ""
        line = (
            f"error: {e.strerror or e} writing {run_dir}{where}: the sweep stops here; {fix} "
            "and run the same command to resume"
        )
    print(line, file=sys.stderr, flush=True)
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
        os.environ[SWEEP_DIR_ENV] = os.path.abspath(config.hydra.sweep.dir)

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
        if message is None:
            print("\n".join(next_steps(config, outcomes)), flush=True)
        if message is not None:
            raise SystemExit(2)
        if failed:
            raise SystemExit(1)

"""A run's lifecycle around its training, written once for every caller: a single run or a
basic sweep's job (zeroinit.run.train_or_resume, from train.py), a stack's members
(zeroinit.stacked.group.train_group), and through them the stacked launcher's places and
SLURM's array tasks. A change to how runs are skipped, locked, resumed or reported is an
edit here.

  claim(run_dir)     a finished run is skipped; one another process holds is left alone
                     (busy); else it is locked, its checkpoint found (resume, said once) and
                     its TensorBoard events made to match it (zeroinit.events)
  finish(end, ...)   what became of it: a run that never started leaves nothing, the
                     sweep's records get its outcome, a user error is one line, any other a
                     traceback (once), the outcome line; and the exit code of a run alone.
                     train.py, the stacked launcher and SLURM's lost jobs all end here.
"""

import fcntl
import logging
import math
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from zeroinit import events
from zeroinit.checkpoint import set_aside, unreadable
from zeroinit.errors import UserError
from zeroinit.keys import NOT_IDENTITY
from zeroinit.results import FILENAME, read_results
from zeroinit.sweep import is_disk_error, is_sweep_wide, record_outcome

log = logging.getLogger("zeroinit")

# A run's directory is named by its configuration and seed (conf/hydra/default.yaml), so the
# same command finds the runs it made before:
#   completed / diverged            -> skipped: a finished result is never overwritten
#   running / failed / interrupted  -> resumed from checkpoints/last.ckpt (or restarted)
FINISHED = ("completed", "diverged")
RESUMABLE = ("running", "failed", "interrupted")  # killed, crashed, stopped by a signal
CHECKPOINT = Path("checkpoints") / "last.ckpt"


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


@dataclass
class Claim:
    outcome: str | None = None  # "skipped" or "busy": nothing to train; None: train it
    results: dict | None = None  # a skipped run's results
    lock: RunLock | None = None  # held while it trains: release() after
    checkpoint: Path | None = None  # where to resume from; None: from the start

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def identity_mismatch(recorded: dict, wanted: dict, ignore=()) -> str | None:
    """How the config a run folder's results.json records differs from the one asked of it
    now (one line), or None. A key only one side has is a setting added to the project since
    (not a difference), unless the other side has a value where it has a section."""
    from zeroinit.config import flatten

    a, b = flatten(recorded), flatten(wanted)

    def leaf_above(key, side):  # e.g. dataset.normalize: None on one side, a dict on the other
        parts = key.split(".")
        return any(".".join(parts[:i]) in side for i in range(1, len(parts)))

    differ = [
        k
        for k in sorted(a.keys() | b.keys())
        if not k.startswith(NOT_IDENTITY + tuple(ignore))
        and (
            (k in a and k in b and a[k] != b[k])
            or (k not in a and leaf_above(k, a))
            or (k not in b and leaf_above(k, b))
        )
    ]
    if not differ:
        return None
    k = differ[0]
    more = f" (and {', '.join(differ[1:])})" if len(differ) > 1 else ""
    return f"{k}={b.get(k)!r} asked here, but the run was made with {k}={a.get(k)!r}{more}"


def check_identity(run_dir, cfg) -> None:
    """A UserError (one line, naming the key) if `run_dir` holds a run of other settings:
    its results would be skipped or resumed as this one's. Nothing is written. A run that
    has not finished may be resumed with another trainer.max_epochs: that makes it longer
    (or shorter), and its checkpoint carries the curve so far."""
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    try:
        results = read_results(run_dir)
    except (OSError, ValueError):  # none yet, or unreadable (claim sets it aside)
        return
    recorded = results.get("config")
    if not recorded:
        return
    wanted = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    longer = ("trainer.max_epochs",) if results.get("status") in RESUMABLE else ()
    mismatch = identity_mismatch(recorded, wanted, ignore=longer)
    if mismatch:
        raise UserError(
            f"{run_dir}: {mismatch}; one folder holds one run: choose another sweep_name= "
            "(or move that folder away) to train these settings"
        )


def claim(run_dir, cfg=None) -> Claim:
    """What to do with `run_dir` now (see the module's docstring). `cfg`: the run's config,
    checked against the run already there (check_identity) before anything else."""
    run_dir = Path(run_dir)
    if cfg is not None:
        check_identity(run_dir, cfg)
    status = previous_status(run_dir)
    if status in FINISHED:
        return Claim("skipped", read_results(run_dir))
    lock = RunLock(run_dir)
    if not lock.acquire():
        return Claim("busy")
    checkpoint = resume_checkpoint(run_dir)
    if checkpoint is not None:
        print(f"resuming {run_dir.name} from {checkpoint} (was {status or 'unknown'})", flush=True)
    events.tidy(run_dir, checkpoint)  # TensorBoard: each step once, from here on too
    return Claim(lock=lock, checkpoint=checkpoint)


class End(NamedTuple):
    """How a run's training ended, as the code that trained it saw it."""

    outcome: str  # completed, diverged, failed, interrupted; skipped or busy (not trained)
    results: dict | None = None  # its results as written (None: it wrote none)
    error: BaseException | str | None = None  # what ended it: the exception itself (a text
    # only where none exists: a SLURM job killed before it could say why)


def failed(run_dir, error: BaseException) -> End:
    """The End of a run that raised `error`: its results.json as far as it got, if any."""
    saved = Path(run_dir) / FILENAME
    return End("failed", read_results(run_dir) if saved.exists() else None, error)


def record(sweep_dir, run_dir, outcome: str, results: dict | None = None, error=None) -> None:
    """The run's outcome in the sweep's records (a no-op outside a sweep)."""
    resumed = outcome not in ("skipped", "busy") and "resumed_from_epoch" in (results or {})
    record_outcome(sweep_dir, run_dir, outcome, error, resumed=resumed)


def remove_unstarted(run_dir, log_dir=None) -> None:
    """A run that never started leaves nothing: its folder, and the folders above it up to
    `log_dir` that only it was in (outputs/runs/)."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    if log_dir is None:
        return
    log_dir = Path(log_dir).absolute()
    for parent in run_dir.absolute().parents:
        if parent == log_dir or log_dir not in parent.parents:
            break
        try:
            parent.rmdir()  # only if empty
        except OSError:
            break


def finish(end: End, run_dir, sweep_dir=None, log_dir=None, tail: str = "") -> int:
    """What becomes of a run once its training ends, for every caller. Returns the exit code
    of a run alone: 0, 1 (it failed) or 2 (a user error: bad input, said in one line).

    A failed run that wrote nothing is removed (`log_dir`: and the folders only it was in);
    in a sweep (`sweep_dir`) its outcome is recorded. A user error is printed as one line;
    a disk error (the caller stops, in one line) and, in a sweep, an error every run shares
    (said once at its end) are not printed here; any other error's traceback is logged once
    (the members of a failed stack share one)."""
    run_dir, e = Path(run_dir), end.error
    if end.outcome == "failed" and not (run_dir / FILENAME).exists():
        remove_unstarted(run_dir, log_dir)
    if sweep_dir is not None:
        record(sweep_dir, run_dir, end.outcome, end.results, e or (end.results or {}).get("error"))
    if isinstance(e, BaseException) and not is_disk_error(e):
        if isinstance(e, UserError):
            if sweep_dir is None or not is_sweep_wide(e):
                print(f"error: {e}", file=sys.stderr, flush=True)
        elif not getattr(e, "_zeroinit_logged", False):
            log.error("run %s failed", run_dir.name, exc_info=e)
            e._zeroinit_logged = True
    line = outcome_line(end.outcome, end.results, run_dir, tail)
    if line:
        print(line, flush=True)
    if isinstance(e, UserError) or isinstance(e, BaseException) and is_disk_error(e):
        return 2
    return 1 if end.outcome == "failed" else 0


def outcome_line(outcome: str, results: dict | None, run_dir, tail: str = "") -> str | None:
    """`completed: test_acc 0.9130  test_loss 0.3284  <tail>`, `skipped, already ...`,
    `busy: ...`; None when there is nothing to say (a run that failed before it wrote)."""
    if outcome == "busy":
        return f"busy: {run_dir} is being trained by another process; left alone"
    if results is None:
        return None
    final = results.get("final") or {}
    numbers = (  # none before a first epoch ended: no "nan" for an accuracy never measured
        f"test_acc {final.get('test_acc', math.nan):.4f}  "
        f"test_loss {final.get('test_loss', math.nan):.4f}  "
        if "test_acc" in final
        else "before its first epoch ended  "
    )
    return (
        f"{'skipped, already ' if outcome == 'skipped' else ''}{results['status']}: {numbers}{tail}"
    ).rstrip()

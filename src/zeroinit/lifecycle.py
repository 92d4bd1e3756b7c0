"""A run's lifecycle around its training, written once for every caller: a single run or a
basic sweep's job (zeroinit.run.train_or_resume, from train.py), a stack's members
(zeroinit.stacked.group.train_group), and through them the stacked launcher's places and
SLURM's array tasks. A change to how runs are skipped, locked, resumed or reported is an
edit here.

  claim(run_dir)     a finished run is skipped; one another process holds is left alone
                     (busy); else it is locked, its checkpoint found (resume, said once) and
                     its TensorBoard events made to match it (zeroinit.events)
  record(...)        what became of it, for the sweep's summary (zeroinit.sweep)
  outcome_line(...)  what became of it, as the one line a user reads
"""

import math
from dataclasses import dataclass
from pathlib import Path

from zeroinit import events
from zeroinit.results import read_results
from zeroinit.sweep import FINISHED, RunLock, previous_status, record_outcome, resume_checkpoint


@dataclass
class Claim:
    outcome: str | None = None  # "skipped" or "busy": nothing to train; None: train it
    results: dict | None = None  # a skipped run's results
    lock: RunLock | None = None  # held while it trains: release() after
    checkpoint: Path | None = None  # where to resume from; None: from the start

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def claim(run_dir) -> Claim:
    run_dir = Path(run_dir)
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


def record(
    sweep_dir, run_dir, outcome: str, results: dict | None = None, error: str | None = None
) -> None:
    """The run's outcome in the sweep's records (a no-op outside a sweep)."""
    resumed = outcome not in ("skipped", "busy") and "resumed_from_epoch" in (results or {})
    record_outcome(sweep_dir, run_dir, outcome, error, resumed=resumed)


def outcome_line(outcome: str, results: dict | None, run_dir, tail: str = "") -> str | None:
    """`completed: test_acc 0.9130  test_loss 0.3284  <tail>`, `skipped, already ...`,
    `busy: ...`; None when there is nothing to say (a run that failed before it wrote)."""
    if outcome == "busy":
        return f"busy: {run_dir} is being trained by another process; left alone"
    if results is None:
        return None
    final = results.get("final") or {}
    return (
        f"{'skipped, already ' if outcome == 'skipped' else ''}{results['status']}: "
        f"test_acc {final.get('test_acc', math.nan):.4f}  "
        f"test_loss {final.get('test_loss', math.nan):.4f}  {tail}"
    ).rstrip()

"""A run's TensorBoard events hold each step once, however often the run was interrupted.

A resumed run goes on from its checkpoint, which can be older than the events already
written (killed after an epoch's line, before that epoch's checkpoint), and a run that starts
over (no checkpoint, or an unreadable one) would log its epochs a second time beside the first
attempt's. So, before a run trains again (zeroinit.lifecycle.claim):

  resumed from a checkpoint   the events files are rewritten keeping what the checkpoint
                              covers: per-epoch tags (test/, train/, time/) up to its epoch,
                              per-step tags (the diagnostics) up to its optimizer step; the
                              config text and HPARAMS session are dropped (the run writes them
                              again when it starts)
  starting over               the old events files are set aside, renamed so that TensorBoard
                              no longer reads them (`...set-aside-events...`); never deleted

TensorBoard's own `purge_step` cannot do this: it purges every tag from one step on, and a
run's tags count in epochs and in optimizer steps.
"""

import logging
import time
from pathlib import Path

log = logging.getLogger("zeroinit")
PATTERN = "events.out.tfevents.*"
PER_EPOCH = ("test/", "train/", "time/")  # zeroinit.results.ResultsWriter's tags: step = epoch
# zeroinit.loggers.tensorboard_header writes these at each start
WRITTEN_AT_START = ("_hparams_/", "config/")


def tidy(run_dir, checkpoint) -> None:
    """Make the events in `run_dir` match what the run resumes from (`checkpoint`: a path, or
    None when it starts over)."""
    files = sorted(Path(run_dir).glob(PATTERN))
    if not files:
        return
    if checkpoint is None:
        for f in files:
            aside = set_aside(f)
            log.info("events of an earlier attempt set aside: %s", aside.name)
        return
    epochs, steps = covered(checkpoint)
    rewrite(files, epochs, steps)


def set_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(path.name.replace("tfevents", f"set-aside-events-{stamp}", 1))
    path.rename(target)
    return target


def covered(checkpoint) -> tuple[int, int]:
    """(epochs, optimizer steps) a checkpoint holds: its curve's length and global step."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    curve = next(
        (
            state["epochs"]
            for state in (ckpt.get("callbacks") or {}).values()
            if isinstance(state, dict) and isinstance(state.get("epochs"), list)
        ),
        [],
    )
    return len(curve), int(ckpt.get("global_step", 0))


def keep(tag: str, step: int, epochs: int, steps: int) -> bool:
    if tag.startswith(WRITTEN_AT_START):
        return False
    return step <= (epochs if tag.startswith(PER_EPOCH) else steps)


def rewrite(files: list[Path], epochs: int, steps: int) -> None:
    """The events of `files`, what the checkpoint covers only, into one new events file
    beside them; the old files are removed once it is written. Events are copied as written
    (LegacyEventFileLoader): the newer loader migrates simple_value scalars to tensors, which
    EventAccumulator.Scalars() would then no longer list."""
    from tensorboard.backend.event_processing.event_file_loader import (
        LegacyEventFileLoader,
    )
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(files[0].parent), filename_suffix=".resumed")
    try:
        for path in files:
            for event in LegacyEventFileLoader(str(path)).Load():
                if event.HasField("file_version"):
                    continue  # the new file has its own
                if event.HasField("summary"):
                    values = [
                        v for v in event.summary.value if keep(v.tag, event.step, epochs, steps)
                    ]
                    if not values:
                        continue
                    del event.summary.value[:]
                    event.summary.value.extend(values)
                writer.add_event(event)
    finally:
        writer.close()
    for path in files:
        path.unlink()

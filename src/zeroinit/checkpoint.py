"""checkpoints/last.ckpt, rewritten atomically after every epoch (and, with
`checkpoint_every_min`, every so many minutes inside an epoch): what a sweep resumes from.

Lightning's ModelCheckpoint writes `last.ckpt` only alongside a top-k checkpoint, and writes
in place, so a kill mid-write could leave a torn file. This callback saves to a temporary
file and renames it. It is a `Checkpoint`, which Lightning always runs after every other
callback, so the checkpoint holds the curve (and diagnostics) up to the epoch it stores,
wherever it is listed.

A checkpoint saved inside an epoch (at a training batch's end) resumes inside that epoch:
Lightning restores its loop counters, the data module skips the batches already trained
(data.ImageDataModule.state_dict) and the module keeps the epoch's running train metrics
(module.Classifier.on_save_checkpoint), so the resumed curve equals an uninterrupted one.

A checkpoint that cannot be read (a torn copy, a full disk at the wrong moment, a file from
elsewhere) is never deleted and never retried for ever: `set_aside` renames it, with the
time, so the run starts over and the file stays for whoever wants to look at it.
"""

import os
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Checkpoint

# What every checkpoint Lightning's fit loop can resume from holds.
REQUIRED_KEYS = ("state_dict", "loops", "optimizer_states", "callbacks")


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath, filename: str = "last.ckpt", every_min: float | None = None):
        self.path = Path(dirpath) / filename
        self.every_s = 60.0 * every_min if every_min else None  # 0 / None: epoch ends only
        self._last_save = None

    def _save(self, trainer):
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # collective under DDP; rank 0 writes
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # a full disk leaves the previous checkpoint, no torn copy
            raise
        self._last_save = time.monotonic()

    def on_train_start(self, trainer, pl_module):
        self._last_save = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # One clock reading a step (~0.1 us); a save only every `every_s` seconds.
        if self.every_s is None or time.monotonic() - self._last_save < self.every_s:
            return
        if batch_idx + 1 < trainer.num_training_batches:  # the epoch's end saves it anyway
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self._save(trainer)


def unreadable(path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None if it can."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - whatever torch or pickle says about a bad file
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else "unreadable"
        return f"{type(e).__name__}: {first}"  # torch's advice on corrupted files: not here
    if not isinstance(ckpt, dict):
        return f"not a Lightning checkpoint (a {type(ckpt).__name__})"
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    return f"not a Lightning checkpoint (no {', '.join(missing)})" if missing else None


def set_aside(path, why: str) -> Path:
    """Rename `path` to <name>.<why>-<time> next to it (never deleted); returns the new path."""
    path = Path(path)
    target = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while target.exists():  # two in one second: keep both
        target = path.with_name(f"{path.name}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    os.replace(path, target)
    return target

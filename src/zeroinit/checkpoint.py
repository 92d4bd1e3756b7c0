"""checkpoints/last.ckpt, rewritten atomically after every epoch: what a sweep resumes from.

Lightning's ModelCheckpoint writes `last.ckpt` only alongside a top-k checkpoint, and writes
in place, so a kill mid-write could leave a torn file. This callback saves to a temporary
file and renames it. It is a `Checkpoint`, which Lightning always runs after every other
callback, so the checkpoint holds the curve (and diagnostics) up to the epoch it stores,
wherever it is listed.
"""
import os
from pathlib import Path

from lightning.pytorch.callbacks import Checkpoint


class LastCheckpoint(Checkpoint):
    def __init__(self, dirpath, filename: str = "last.ckpt"):
        self.path = Path(dirpath) / filename

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmp, weights_only=False)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.path)

"""Progress inside long epochs, on an interactive terminal only.

A run prints one line per epoch (results.py). An epoch of ResNet-50 on a CPU is hours, so on
a terminal, once an epoch has run for AFTER_S seconds, one line is rewritten in place (at most
every EVERY_S seconds) with the steps done, the rate and the epoch's ETA, and erased before the
epoch's own line. Where output is not a terminal (CI, SLURM logs, a pipe) nothing changes: one
line per epoch. Its cost in a step: one clock reading (~0.1 us), and a write twice a second.
"""

import sys
import time

import lightning as L

AFTER_S = 3.0  # shorter epochs never show it
EVERY_S = 0.5


class Progress(L.Callback):
    def __init__(self, stream=None, after_s: float = AFTER_S, every_s: float = EVERY_S):
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty()
        self.after_s, self.every_s = after_s, every_s
        self._start = self._next = None
        self._first = 0  # the epoch's first batch here (a run resumed inside an epoch: later)
        self._width = 0  # of the line on screen, to erase it

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.enabled:
            return
        now = time.monotonic()
        if self._start is None:
            self._start, self._first, self._next = now, batch_idx, now + self.after_s
            return
        if now < self._next:
            return
        self._next = now + self.every_s
        done, total = batch_idx + 1, trainer.num_training_batches
        rate = (done - self._first - 1) / (now - self._start)
        eta = (total - done) / rate if rate > 0 else float("inf")
        line = (
            f"epoch {trainer.current_epoch + 1:>3}/{trainer.max_epochs}  "
            f"step {done}/{total}  {rate:.1f} steps/s  ETA {_clock(eta)}"
        )
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def _erase(self):
        if self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def on_validation_start(self, trainer, pl_module):
        self._erase()  # the test-split evaluation, then the epoch's line

    def on_train_epoch_end(self, trainer, pl_module):
        self._erase()

    def on_exception(self, trainer, pl_module, exception):
        self._erase()


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"

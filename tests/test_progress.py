"""Progress inside an epoch (src/zeroinit/progress.py): on a terminal only, erased before
the epoch's line; nothing where output is a file or a pipe."""

import io

from zeroinit.progress import Progress
from zeroinit.run import build_run


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fit_with(make_cfg, progress):
    cfg = make_cfg(
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=6",
        "batch_size=32",
        "callbacks.diagnostics=null",
    )
    trainer, module, data, _ = build_run(cfg)
    (ours,) = [c for c in trainer.callbacks if isinstance(c, Progress)]
    trainer.callbacks[trainer.callbacks.index(ours)] = progress
    trainer.fit(module, datamodule=data)


def test_on_a_terminal_a_long_epoch_shows_steps_rate_and_eta_then_erases_it(make_cfg):
    screen = Terminal()
    fit_with(make_cfg, Progress(screen, after_s=0, every_s=0))  # as if every epoch were long
    text = screen.getvalue()
    updates = [u for u in text.split("\r") if u.strip()]
    assert updates[0].startswith("epoch   1/2  step 2/6  ") and "steps/s  ETA " in updates[0]
    assert updates[-1].startswith("epoch   2/2  step 6/6")
    assert text.endswith("\r")  # erased: the epoch's own line starts on a clean line


def test_short_epochs_and_non_terminals_show_nothing(make_cfg):
    screen = Terminal()
    fit_with(make_cfg, Progress(screen))  # epochs of a fraction of a second
    assert screen.getvalue() == ""
    log = io.StringIO()  # a file, a pipe, a SLURM log
    progress = Progress(log, after_s=0, every_s=0)
    assert not progress.enabled
    fit_with(make_cfg, progress)
    assert log.getvalue() == ""

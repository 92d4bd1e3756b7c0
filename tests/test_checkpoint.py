"""checkpoints/last.ckpt: a Lightning Checkpoint, so it runs after the other callbacks
wherever it is listed, and holds the curve of the epoch it stores."""

import lightning as L
import pytest
import torch

from zeroinit.checkpoint import LastCheckpoint
from zeroinit.config import build
from zeroinit.diagnostics import Diagnostics
from zeroinit.results import ResultsWriter
from zeroinit.run import build_run, compose, run


def test_the_checkpoint_runs_last_and_holds_the_epochs_curve(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=2", "+trainer.limit_train_batches=2", "batch_size=16")
    built, module, data, writer = build_run(cfg)
    ours = [
        c for c in built.callbacks if isinstance(c, (ResultsWriter, Diagnostics, LastCheckpoint))
    ]
    assert len(ours) == 3
    # listed first: Lightning still runs it after the results writer and the diagnostics
    trainer = build(cfg.trainer, logger=False, callbacks=ours[::-1])
    assert isinstance(trainer.callbacks[-1], LastCheckpoint)
    trainer.fit(module, datamodule=data)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert [e["epoch"] for e in ckpt["callbacks"]["ResultsWriter"]["epochs"]] == [1, 2]
    assert ckpt["callbacks"]["Diagnostics"]["record"]["symmetry"]["history"]["epoch"][-1] == 2


class Killed(BaseException):
    """What a SIGKILL or a power cut does to a run, as far as its files are concerned."""


class KillAt(L.Callback):
    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch + 1 == self.epoch and batch_idx + 1 == self.batch:
            raise Killed  # before this batch's checkpoint: the last one is the batch before


def curve(results):
    return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in results["epochs"]]


EVERY_BATCH = [
    "trainer.max_epochs=3",
    "+trainer.limit_train_batches=8",
    "batch_size=32",
    "callbacks.diagnostics=null",
    "checkpoint_every_min=1e-9",
]  # a checkpoint after every batch


def killed_inside_epoch_2(make_cfg, out):
    """A run of EVERY_BATCH killed at batch 5 of epoch 2; returns its last checkpoint (saved
    after batch 4)."""
    with pytest.raises(Killed):
        run(
            make_cfg(
                *EVERY_BATCH,
                "+callbacks.kill._target_=test_checkpoint.KillAt",
                "+callbacks.kill.epoch=2",
                "+callbacks.kill.batch=5",
                f"paths.output_dir={out}",
            )
        )
    return out / "checkpoints" / "last.ckpt"


def test_a_run_killed_inside_an_epoch_resumes_there_to_the_same_curve(make_cfg, tmp_path):
    whole = run(make_cfg(*EVERY_BATCH, f"paths.output_dir={tmp_path / 'whole'}"))
    out = tmp_path / "killed"
    ckpt = killed_inside_epoch_2(make_cfg, out)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["ImageDataModule"] == {"epoch": 1, "batches_done": 4}  # inside epoch 2
    assert [e["epoch"] for e in saved["callbacks"]["ResultsWriter"]["epochs"]] == [1]

    resumed = run(make_cfg(*EVERY_BATCH, f"paths.output_dir={out}"), ckpt_path=ckpt)
    assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] == 1
    assert curve(resumed) == curve(whole)  # batches 5-8 of epoch 2, then epoch 3, as before


def test_without_checkpoint_every_min_only_epoch_ends_save(make_cfg, tmp_path):
    cfg = make_cfg(
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4",
        "batch_size=32",
        "callbacks.diagnostics=null",
        "checkpoint_every_min=0",
    )
    (last,) = [c for c in build_run(cfg)[0].callbacks if isinstance(c, LastCheckpoint)]
    assert last.every_s is None
    assert compose().checkpoint_every_min == 10  # the default: only epochs over 10 minutes


def test_a_checkpoint_of_lightnings_automatic_optimization_resumes_at_its_step(
    make_cfg, tmp_path, monkeypatch
):
    """Checkpoints written before the module stepped its optimizer itself (Lightning's
    automatic optimization counted the steps elsewhere) resume at their global step and to
    the same curve."""
    from zeroinit.module import SummingModule

    whole = run(make_cfg(*EVERY_BATCH, f"paths.output_dir={tmp_path / 'whole'}"))
    out = tmp_path / "old"
    with monkeypatch.context() as old:  # the module as it was: Lightning steps
        init = SummingModule.__init__

        def automatic(self, *a, **kw):
            init(self, *a, **kw)
            self.automatic_optimization = True

        old.setattr(SummingModule, "__init__", automatic)
        old.setattr(SummingModule, "training_step", lambda self, b, i: self._step(b, "train"))
        ckpt = killed_inside_epoch_2(make_cfg, out)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["global_step"] == 12
    assert "epoch_loop.manual_optimization.optim_step_progress" in saved["loops"]["fit_loop"]
    resumed = run(make_cfg(*EVERY_BATCH, f"paths.output_dir={out}"), ckpt_path=ckpt)
    assert resumed["status"] == "completed"
    assert curve(resumed) == curve(whole)
    final = torch.load(ckpt, weights_only=False)
    assert final["global_step"] == 24

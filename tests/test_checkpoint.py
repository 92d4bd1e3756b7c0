"""checkpoints/last.ckpt: a Lightning Checkpoint, so it runs after the other callbacks
wherever it is listed, and holds the curve of the epoch it stores."""
import torch

from zeroinit.checkpoint import LastCheckpoint
from zeroinit.config import build
from zeroinit.diagnostics import Diagnostics
from zeroinit.results import ResultsWriter
from zeroinit.run import build_run


def test_the_checkpoint_runs_last_and_holds_the_epochs_curve(make_cfg, tmp_path):
    cfg = make_cfg("trainer.max_epochs=2", "+trainer.limit_train_batches=2", "batch_size=16")
    built, module, data, writer = build_run(cfg)
    ours = [c for c in built.callbacks if isinstance(c, (ResultsWriter, Diagnostics,
                                                          LastCheckpoint))]
    assert len(ours) == 3
    # listed first: Lightning still runs it after the results writer and the diagnostics
    trainer = build(cfg.trainer, logger=False, callbacks=ours[::-1])
    assert isinstance(trainer.callbacks[-1], LastCheckpoint)
    trainer.fit(module, datamodule=data)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert [e["epoch"] for e in ckpt["callbacks"]["ResultsWriter"]["epochs"]] == [1, 2]
    assert ckpt["callbacks"]["Diagnostics"]["record"]["symmetry"]["history"]["epoch"][-1] == 2

"""Train one model: dataset x model x init scheme x bias scale, composed by Hydra.

    python src/train.py                                   # embedded MNIST subset, ~1 min on CPU
    python src/train.py dataset=mnist model=mnist_cnn init=bias_uniform bias_scale=up
    python src/train.py -m init=zero,pytorch,bias_normal seed=0,1,2,3,4
    tensorboard --logdir outputs

Each run writes to its own directory: results.json (rewritten after every epoch),
TensorBoard events, checkpoints/last.ckpt and the resolved config (.hydra/).
"""
import logging
import shutil
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from zeroinit.config import UserError, build, register_resolvers, validate
from zeroinit.init import apply_init
from zeroinit.module import Classifier
from zeroinit.results import FILENAME, ResultsWriter

log = logging.getLogger("zeroinit")
register_resolvers()


def _quiet_lightning():
    # Lightning's start-up chatter (GPU available, TPU available, ...) buries the results.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    for message in (".*Checkpoint directory.*exists and is not empty.*", ".*LeafSpec.*",
                    ".*smaller than the logging interval.*"):
        warnings.filterwarnings("ignore", message=message)


def _flat(d: dict, prefix="") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def setup(cfg: DictConfig, overrides=(), data=None):
    """The objects of one run: (trainer, module, data, writer), ready for `trainer.fit`.

    `data` replaces the configured dataset (benchmarks/ passes one holding random images)."""
    _quiet_lightning()
    validate(cfg)
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=False, verbose=False)

    if data is None:
        data = build(cfg.dataset, batch_size=cfg.batch_size, seed=cfg.seed, name=cfg.dataset.name)
    data.load()  # before the model: the dataset decides input shape and class count
    net = build(cfg.model, ignore=["name"], input_shape=data.input_shape, num_classes=data.num_classes)
    apply_init(net, cfg.init.weight, cfg.init.bias, cfg.init.bias_scale)
    module = Classifier(net, data.num_classes, optimizer=build(cfg.optimizer))

    config = OmegaConf.to_container(cfg, resolve=True)
    writer = ResultsWriter(out_dir, config, overrides)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                                 save_on_train_epoch_end=True)
    extra = [build(c) for c in (cfg.get("callbacks") or {}).values() if c]
    logger = build(cfg.logger) if cfg.get("logger") else None
    trainer = build(cfg.trainer, logger=logger if logger else False,
                    callbacks=[writer, *extra, checkpoint])
    if logger:
        logger.log_hyperparams(_flat(config), metrics={"hp/test_acc": 0.0})
    return trainer, module, data, writer


def run(cfg: DictConfig, overrides=()) -> dict:
    """One training run; returns its results (also written to <output_dir>/results.json)."""
    trainer, module, data, writer = setup(cfg, overrides)
    trainer.fit(module, datamodule=data)
    return writer.results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(cfg.paths.output_dir)
    try:
        results = run(cfg, HydraConfig.get().overrides.task)
    except UserError as e:
        # Nothing half-written: drop the directory Hydra made for a run that never started.
        if not (out_dir / FILENAME).exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    final = results.get("final") or {}
    print(f"{results['status']}: test_acc {final.get('test_acc', float('nan')):.4f}  "
          f"test_loss {final.get('test_loss', float('nan')):.4f}  "
          f"({results['wall_time_s']:.1f}s on {results['device']})\n"
          f"logs: {out_dir}  (tensorboard --logdir {cfg.paths.log_dir})", flush=True)
    if results["status"] == "failed":
        sys.exit(1)
    return final.get("test_acc")


if __name__ == "__main__":
    main()

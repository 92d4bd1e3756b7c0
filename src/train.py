"""Train one model: dataset x model x init scheme x bias scale, composed by Hydra.

    python src/train.py                                   # embedded MNIST subset, ~1 min on CPU
    python src/train.py dataset=mnist model=mnist_cnn init=bias_uniform bias_scale=up
    python src/train.py -m init=zero,pytorch,bias_normal seed=0,1,2,3,4
    tensorboard --logdir outputs

Each run writes to its own directory: results.json (rewritten after every epoch),
TensorBoard events, checkpoints/last.ckpt and the resolved config (.hydra/).
"""
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from zeroinit import speed
from zeroinit.checkpoint import LastCheckpoint
from zeroinit.config import UserError, build, flatten, register_resolvers, validate
from zeroinit.init import apply_init
from zeroinit.module import Classifier
from zeroinit.results import FILENAME, ResultsWriter, read_results
from zeroinit.signals import STOPPED, StopOnSignal, leave
from zeroinit.sweep import (FINISHED, GpuSlot, RunLock, previous_status, record_outcome,
                            resume_checkpoint)

log = logging.getLogger("zeroinit")
RESUME_ENV = "ZEROINIT_RESUME_CKPT"
register_resolvers()


def _quiet_lightning():
    # Lightning's start-up chatter (GPU available, TPU available, ...) buries the results.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*LeafSpec.*",
                    ".*smaller than the logging interval.*",
                    ".*srun. command is available.*"):  # a local run on a SLURM login node
        warnings.filterwarnings("ignore", message=message)


def setup(cfg: DictConfig, overrides=(), data=None):
    """The objects of one run: (trainer, module, data, writer), ready for `trainer.fit`.

    `data` replaces the configured dataset (benchmarks/ passes one holding random images)."""
    _quiet_lightning()
    validate(cfg)
    speed.configure(cfg.get("speed"))  # fp32 unless conf/speed says otherwise
    out_dir = Path(cfg.paths.output_dir)
    L.seed_everything(cfg.seed, workers=False, verbose=False)

    if data is None:
        data = build(cfg.dataset, batch_size=cfg.batch_size, seed=cfg.seed, name=cfg.dataset.name)
    data.load()  # before the model: the dataset decides input shape and class count
    net = build(cfg.model, ignore=["name"], input_shape=data.input_shape, num_classes=data.num_classes)
    apply_init(net, cfg.init.weight, cfg.init.bias, cfg.init.bias_scale)
    net = speed.prepare(net, cfg.get("speed"))  # channels_last, torch.compile (opt-in)
    module = Classifier(net, data.num_classes, optimizer=build(cfg.optimizer))

    config = OmegaConf.to_container(cfg, resolve=True)
    writer = ResultsWriter(out_dir, config, overrides)
    checkpoint = LastCheckpoint(out_dir / "checkpoints")  # last: after the writer
    extra = [build(c) for c in (cfg.get("callbacks") or {}).values() if c]
    logger = build(cfg.logger) if cfg.get("logger") else None
    trainer = build(cfg.trainer, logger=logger if logger else False,
                    callbacks=[writer, *extra, checkpoint, StopOnSignal()],  # stop: last
                    enable_checkpointing=False)
    if logger:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                   for k, v in flatten(config).items()}  # the HPARAMS tab takes scalars
        logger.log_hyperparams(hparams, metrics={"hp/test_acc": 0.0})
    return trainer, module, data, writer


def run(cfg: DictConfig, overrides=(), ckpt_path=None) -> dict:
    """One training run; returns its results (also written to <output_dir>/results.json).
    With `ckpt_path` it resumes from that checkpoint, curve so far included."""
    gpu = _claim_gpu(cfg)
    try:
        if gpu is not None:
            cfg = cfg.copy()
            cfg.trainer.devices = [gpu.index]
        trainer, module, data, writer = setup(cfg, overrides)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    finally:
        if gpu is not None:
            gpu.release()
    return writer.results


def _claim_gpu(cfg) -> GpuSlot | None:
    """Concurrent runs of a sweep (joblib workers, several sweeps) each get a GPU of their own,
    or share one only as far as `runs_per_gpu` allows. Single-device runs only: DDP and an
    explicit device list keep what they asked for."""
    t = cfg.trainer
    if (t.get("accelerator") not in ("auto", "gpu", "cuda") or t.get("devices") not in (1, "1")
            or "ddp" in str(t.get("strategy", "")) or not torch.cuda.is_available()):
        return None
    slot = GpuSlot(torch.cuda.device_count(), int(cfg.get("runs_per_gpu", 1)))
    slot.acquire()
    log.info("GPU slot %s -> cuda:%d", slot.slot, slot.index)
    return slot


def train_or_resume(cfg: DictConfig, overrides=()) -> tuple[str, dict | None]:
    """What a sweep job does: skip a finished run, resume an interrupted one, else train.
    Returns (outcome, results): outcome is the run's final status, or skipped / busy."""
    out_dir = Path(cfg.paths.output_dir)
    if _ddp_worker():  # DDP re-launched this script for rank > 0: follow rank 0's decision
        results = run(cfg, overrides, ckpt_path=os.environ.get(RESUME_ENV) or None)
        return results["status"], results
    status = previous_status(out_dir)
    if status in FINISHED:
        return "skipped", read_results(out_dir)
    lock = RunLock(out_dir)
    if not lock.acquire():
        return "busy", None
    try:
        ckpt = resume_checkpoint(out_dir)
        os.environ[RESUME_ENV] = str(ckpt or "")  # inherited by DDP's rank > 0 processes
        if ckpt is not None:
            print(f"resuming {out_dir.name} from {ckpt} (was {status})", flush=True)
        results = run(cfg, overrides, ckpt_path=ckpt)
        return results["status"], results
    finally:
        lock.release()


def _ddp_worker() -> bool:
    # Lightning's DDP launcher starts ranks > 0 as new processes of this script, LOCAL_RANK set.
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _limit_threads_for_parallel_jobs():
    # n joblib workers x all cores each would oversubscribe the CPU: share the cores.
    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    out_dir = Path(cfg.paths.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    _limit_threads_for_parallel_jobs()
    try:
        outcome, results = train_or_resume(cfg, hc.overrides.task)
    except STOPPED as stop:  # SIGTERM & co.: saved; record, then leave (zeroinit/signals.py)
        if sweeping:
            record_outcome(hc.sweep.dir, out_dir, "interrupted", str(stop))
        leave(stop, out_dir, resumable=sweeping)
    except Exception as e:  # noqa: BLE001 - a sweep goes on past one failed run
        if not (out_dir / FILENAME).exists():  # nothing half-written: a run that never started
            shutil.rmtree(out_dir, ignore_errors=True)
        if sweeping:
            record_outcome(hc.sweep.dir, out_dir, "failed", f"{type(e).__name__}: {e}")
        if isinstance(e, UserError):
            print(f"error: {e}", file=sys.stderr)
            if not sweeping:
                sys.exit(2)
            return None
        log.exception("run %s failed", out_dir.name)
        if not sweeping:
            raise
        return None
    if sweeping:
        record_outcome(hc.sweep.dir, out_dir, outcome, (results or {}).get("error"),
                       resumed=outcome not in ("skipped", "busy")
                       and "resumed_from_epoch" in (results or {}))
    if _ddp_worker():  # rank 0 reports for the run
        return None
    if outcome == "busy":
        print(f"busy: {out_dir} is being trained by another process; left alone", flush=True)
        return None
    final = results.get("final") or {}
    print(f"{'skipped, already ' if outcome == 'skipped' else ''}{results['status']}: "
          f"test_acc {final.get('test_acc', float('nan')):.4f}  "
          f"test_loss {final.get('test_loss', float('nan')):.4f}  "
          f"({results['wall_time_s']:.1f}s on {results['device']})\n"
          f"logs: {out_dir}  (tensorboard --logdir {cfg.paths.log_dir})", flush=True)
    if results["status"] == "failed" and not sweeping:
        sys.exit(1)
    return final.get("test_acc")


if __name__ == "__main__":
    main()

"""One place to build and train a run: every script, benchmark and test calls these.

    cfg = compose("model=mnist_cnn", "init=bias_normal")     # the same config train.py gets
    data = build_data(cfg)                                    # or your own ImageDataModule
    net = build_net(cfg, data)                                # seeded, init scheme applied
    trainer, module, data, writer = build_run(cfg, data=data) # ready for trainer.fit
    results = run(cfg)                                        # all of the above + fit

`build_member` is the single definition of a run's own objects (its net from `build_net`,
results writer, callbacks, loggers) and `start` of what a fit checks and prints first: a run
alone is one member trained by its own Trainer (`build_run`), a stack is K members joined by
zeroinit.stacked (group.py). So a member starts bitwise equal to the separate run with the
same config and seed, and gets the same checks and notes.
"""

import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from zeroinit import perturb, speed
from zeroinit.checkpoint import LastCheckpoint
from zeroinit.config import build, build_model, check_device, register_resolvers, validate
from zeroinit.errors import UserError
from zeroinit.gpus import GpuSlot, ddp_worker
from zeroinit.lifecycle import claim
from zeroinit.loggers import build_loggers, keep_runs, known_runs, run_ids, set_aside_runs
from zeroinit.module import Classifier
from zeroinit.progress import Progress
from zeroinit.results import FILENAME, ResultsWriter, read_results
from zeroinit.signals import StopOnSignal

log = logging.getLogger("zeroinit")
CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
RESUME_ENV = "ZEROINIT_RESUME_CKPT"


def compose(*overrides: str, return_hydra_config: bool = False) -> DictConfig:
    """conf/train.yaml composed with `overrides`, as `python src/train.py <overrides>` sees it.
    The run's folder is the one train.py would make (outputs/runs/<time>_<run name>), unless
    `paths.output_dir=...` says another: a notebook can `run(compose(...))` as it is.
    `compose("init=zero", "seed=1")` or a list of them, `compose(["init=zero", "seed=1"])`;
    what Hydra refuses is a UserError of one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = override_list(overrides)
    register_resolvers()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        try:
            cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            raise UserError(f"compose: {one_line(e)}") from None
    if not any(o.startswith(("paths.output_dir=", "++paths.output_dir=")) for o in overrides):
        HydraConfig.instance().set_config(cfg)  # what the run folder's name reads
        with open_dict(cfg):
            cfg.paths.output_dir = str(Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute())
    if not return_hydra_config:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg


def override_list(overrides) -> list[str]:
    """compose's arguments as Hydra's list of strings: strings, or lists / tuples of them."""
    out = []
    for o in overrides:
        if isinstance(o, (list, tuple)):
            out += override_list(o)
        elif not isinstance(o, str):
            raise UserError(
                f"compose: overrides are strings such as 'init=zero', got {o!r} "
                f"({type(o).__name__})"
            )
        elif len(parts := re.split(r"\s+(?=[+~]*[\w.]+=|~[\w.]+$|~[\w.]+\s)", o.strip())) > 1:
            raise UserError(
                f"compose: {o!r} holds {len(parts)} overrides in one string: pass each as its "
                f"own, compose({', '.join(map(repr, parts))})"
            )
        else:
            out.append(o)
    return out


def one_line(e: BaseException) -> str:
    """Hydra's message on one line: its first lines, and the options it lists by name."""
    lines = []
    for line in str(e).splitlines():
        line = line.strip()
        if line.startswith("Config search path"):  # where it looked: not what is wrong
            break
        if not line or line.startswith(("full_key:", "object_type", "See https://hydra.cc")):
            continue
        lines.append(line.rstrip(":") if line.startswith("Available options") else line.rstrip("."))
    text = "; ".join(lines)
    return re.sub(r"(Available options in '[^']*')((?:; [\w.-]+)+)", _options, text)


def _options(match) -> str:
    return f"{match.group(1)}: {', '.join(match.group(2)[2:].split('; '))}"


def quiet_lightning():
    # Lightning's start-up chatter (GPU available, TPU available, ...) buries the results.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow: "Experiment ... not found. Creating it." and its database set-up, every run
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    for message in (
        ".*does not have many workers.*",
        ".*LeafSpec.*",
        ".*smaller than the logging interval.*",
        ".*srun. command is available.*",  # a local run on a SLURM login node
        # a mid-epoch resume: the data module skips the trained batches itself
        ".*your dataloader is not resumable.*",
    ):
        warnings.filterwarnings("ignore", message=message)


def build_data(cfg: DictConfig):
    """The run's ImageDataModule, read (the dataset decides input shape and class count)."""
    return build(
        cfg.dataset, batch_size=cfg.batch_size, seed=cfg.seed, name=cfg.dataset.name
    ).load()


def build_net(cfg: DictConfig, data) -> torch.nn.Module:
    """The run's network with its init scheme applied, drawn after seeding with cfg.seed."""
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    net = build_model(cfg, data.input_shape, data.num_classes)
    net = build(cfg.init).apply(net)  # conf/init -> zeroinit.init.InitScheme
    return perturb.of(cfg).apply(net)  # conf/perturb: off unless a study sets it


def build_callbacks(cfg: DictConfig, writer: ResultsWriter, mid_epoch: bool = True) -> list:
    """The run's callbacks: its results writer, the configured extras (conf/callbacks), and
    the checkpoint (a Lightning Checkpoint: Lightning runs it after the others, wherever it
    is listed; a stacked member's callbacks are called in this order too). `mid_epoch`:
    also every `checkpoint_every_min` minutes inside an epoch (stacked members: no)."""
    extra = [build(c) for c in (cfg.get("callbacks") or {}).values() if c]
    every = cfg.get("checkpoint_every_min") if mid_epoch else None
    return [
        writer,
        *extra,
        LastCheckpoint(Path(cfg.paths.output_dir) / "checkpoints", every_min=every),
    ]


def build_run_loggers(cfg: DictConfig, writer: ResultsWriter, resume: bool = False) -> list:
    """The run's loggers (conf/logger). A resumed run's continue the MLflow / W&B runs that
    an earlier attempt made (logger_runs.json, else results.json's `logger_runs`); a run that
    starts over sets the earlier MLflow runs aside (zeroinit.loggers)."""
    run_dir = Path(cfg.paths.output_dir)
    earlier = known_runs(run_dir)
    if not earlier and (run_dir / FILENAME).exists():  # a run from before logger_runs.json
        try:
            earlier = read_results(run_dir).get("logger_runs") or {}
        except (OSError, ValueError, AttributeError):  # unreadable: nothing to continue
            earlier = {}
    loggers = build_loggers(cfg, writer.results["config"], earlier if resume else None)
    if not ddp_worker():
        now = run_ids(cfg, loggers)
        if not resume:
            set_aside_runs(loggers, earlier, now)
        keep_runs(run_dir, {**earlier, **now})  # a logger left out this time keeps its id
        writer.results["logger_runs"] = now
    return loggers


def check_run(cfg: DictConfig) -> None:
    """Every check of a run's settings that needs no data: a UserError (one line) if not."""
    validate(cfg)
    build(cfg.init)  # InitScheme checks its values when built
    perturb.of(cfg)  # and Perturbation
    check_device(cfg)


def start(cfg: DictConfig, data=None, stacked: bool = False):
    """What one fit needs before its members: the run's checks, the process-wide speed
    switches, the data read and the notes a user should see once. Returns (speed settings,
    data). `stacked`: the settings of a stack's net (zeroinit.speed.for_stack)."""
    quiet_lightning()
    check_run(cfg)
    settings = speed.configure(cfg.get("speed"))  # fp32 unless conf/speed says otherwise
    data = (data if data is not None else build_data(cfg)).load()
    for note in (speed.cpu_note(cfg), data.batch_size_note()):
        if note and not ddp_worker():
            print(f"warning: {note}", file=sys.stderr, flush=True)
    return (speed.for_stack(settings) if stacked else settings), data


@dataclass
class RunParts:
    """One run's own objects, whether it trains alone or as a member of a stack."""

    cfg: DictConfig
    net: torch.nn.Module  # seeded, init scheme applied; speed settings not yet
    callbacks: list  # results writer, conf/callbacks, checkpoint
    loggers: list
    writer: ResultsWriter


def build_member(
    cfg: DictConfig, data, overrides=(), resume: bool = False, stack_size: int | None = None
) -> RunParts:
    """The parts of one run, for `build_run` (a run alone) and a stack's members alike.
    `resume`: the fit restores a checkpoint (the loggers continue their runs). `stack_size`:
    it trains as one of that many members (quiet: the stack prints one line per epoch; no
    checkpoint inside an epoch)."""
    check_run(cfg)
    net = build_net(cfg, data)
    config = OmegaConf.to_container(cfg, resolve=True)
    writer = ResultsWriter(cfg.paths.output_dir, config, overrides, verbose=stack_size is None)
    if stack_size is not None:
        writer.results["stack_size"] = stack_size
    loggers = build_run_loggers(cfg, writer, resume)
    callbacks = build_callbacks(cfg, writer, mid_epoch=stack_size is None)
    return RunParts(cfg, net, callbacks, loggers, writer)


def build_run(cfg: DictConfig, overrides=(), data=None, resume: bool = False):
    """The objects of one run: (trainer, module, data, writer), ready for `trainer.fit`.

    `data` replaces the configured dataset (any object with ImageDataModule's interface:
    benchmarks/ passes one holding random images of the real sizes). `resume`: the fit
    will restore a checkpoint (the loggers continue their runs)."""
    settings, data = start(cfg, data)
    parts = build_member(cfg, data, overrides, resume)
    net = speed.prepare(parts.net, settings)  # channels_last, compile
    optimizer = speed.optimizer(build(cfg.optimizer), settings)  # fused or not
    module = Classifier(net, data.num_classes, optimizer=optimizer)
    # Progress first: its line is erased before the results writer prints the epoch's.
    trainer = build(
        cfg.trainer,
        logger=parts.loggers or False,
        callbacks=[Progress(), *parts.callbacks, StopOnSignal()],
    )
    return trainer, module, data, parts.writer


def run(cfg: DictConfig, overrides=(), ckpt_path=None) -> dict:
    """One training run; returns its results (also written to <output_dir>/results.json).
    With `ckpt_path` it resumes from that checkpoint, curve so far included."""
    gpu = claim_gpu(cfg)
    try:
        if gpu is not None:
            cfg = cfg.copy()
            cfg.trainer.devices = [gpu.index]
        trainer, module, data, writer = build_run(cfg, overrides, resume=ckpt_path is not None)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    finally:
        if gpu is not None:
            gpu.release()
    return writer.results


def restore_hydra_config(out_dir) -> None:
    """.hydra/config.yaml as the run in `out_dir` was made (its results.json's config,
    resolved): Hydra's basic launcher writes the new command's before the job starts."""
    saved = Path(out_dir) / ".hydra" / "config.yaml"
    if saved.exists():
        saved.write_text(OmegaConf.to_yaml(read_results(out_dir)["config"]), encoding="utf-8")


def claim_gpu(cfg) -> GpuSlot | None:
    """Concurrent runs of a sweep (joblib workers, several sweeps) each get a GPU of their own,
    or share one only as far as `runs_per_gpu` allows. Single-device runs only: DDP and an
    explicit device list keep what they asked for."""
    t = cfg.trainer
    if (
        t.get("accelerator") not in ("auto", "gpu", "cuda")
        or t.get("devices") not in (1, "1")
        or "ddp" in str(t.get("strategy", ""))
        or not torch.cuda.is_available()
    ):
        return None
    slot = GpuSlot(torch.cuda.device_count(), int(cfg.get("runs_per_gpu", 1)))
    slot.acquire()
    log.info("GPU slot %s -> cuda:%d", slot.slot, slot.index)
    return slot


def train_or_resume(cfg: DictConfig, overrides=()) -> tuple[str, dict | None]:
    """What a sweep job does: skip a finished run, resume an interrupted one, else train.
    Returns (outcome, results): outcome is the run's final status, or skipped / busy."""
    out_dir = Path(cfg.paths.output_dir)
    if ddp_worker():  # DDP re-launched this script for rank > 0: follow rank 0's decision
        results = run(cfg, overrides, ckpt_path=os.environ.get(RESUME_ENV) or None)
        return results["status"], results
    try:
        claimed = claim(out_dir, cfg)
    except UserError:
        restore_hydra_config(out_dir)  # another run's folder: put back what Hydra rewrote
        raise
    if claimed.outcome is not None:  # skipped or busy
        return claimed.outcome, claimed.results
    try:
        os.environ[RESUME_ENV] = str(claimed.checkpoint or "")  # inherited by DDP's ranks > 0
        results = run(cfg, overrides, ckpt_path=claimed.checkpoint)
        return results["status"], results
    finally:
        claimed.release()

"""A run's loggers (conf/logger/: one YAML each, any set of them at once, e.g.
`logger=[tensorboard,mlflow]`) and what every one of them receives.

Every logger gets the same things through Lightning's Logger interface, so a new logger is one
YAML: the experiment's keys (`log_hyperparams`: experiment_hparams, so MLflow's params and
W&B's config filter by init, bias scale and seed), every per-epoch metric and every scalar the
diagnostics measure (`log_metrics`, against the epoch or the optimizer step, as results.json
counts them). What only TensorBoard can show (the HPARAMS table's layout, the config as TEXT,
gradient histograms, diagnostics tables) goes to a TensorBoard logger when the set has one.

A resumed run continues its runs in MLflow and W&B: their ids are kept in the run folder
(`logger_runs.json`, which nothing sets aside, and results.json's `logger_runs`) and handed
back to the loggers here, so a run folder has one MLflow run however often it came back. A run
that starts over (its checkpoint gone or unreadable) gets a new MLflow run and the earlier
attempt's is marked deleted in MLflow (restorable: MlflowClient().restore_run(id)), tagged
`zeroinit.set_aside`: like the earlier attempt's events, set aside, not lost.
"""

import json
import logging
import os
import threading
import time
from pathlib import Path

from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from zeroinit import speed
from zeroinit.config import build
from zeroinit.files import replaced_atomically
from zeroinit.gpus import ddp_worker
from zeroinit.keys import NAME_KEYS

log = logging.getLogger("zeroinit")
RUNS_FILE = "logger_runs.json"
SHOWN_HPARAMS = (*(k for k in NAME_KEYS if k != "dataset"), "epochs")


def build_loggers(cfg: DictConfig, config: dict, previous_runs: dict | None = None) -> list:
    """The run's loggers, in conf/logger's order ([] for `~logger`). `previous_runs`: a
    resumed run's `logger_runs` (results.json), so it goes on in the same MLflow/W&B run."""
    loggers, continued = [], []
    for key, spec in (cfg.get("logger") or {}).items():
        if not spec:
            continue
        spec = OmegaConf.to_container(spec, resolve=True)
        if isinstance(spec.get("tracking_uri"), str):
            spec["tracking_uri"] = absolute_sqlite(spec["tracking_uri"])
        run_id = (previous_runs or {}).get(key)
        if run_id and "MLFlowLogger" in spec["_target_"]:
            spec["run_id"] = run_id
        elif run_id and "Wandb" in spec["_target_"]:
            spec.update(id=run_id, resume="allow")
        loggers.append(build(spec))
        continued.append(bool(run_id))
    if any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        quiet_writer_threads()
    if ddp_worker():  # rank 0 writes
        return loggers
    hparams = experiment_hparams(cfg)
    for logger, again in zip(loggers, continued):
        if isinstance(logger, TensorBoardLogger):
            tensorboard_header(logger, hparams, config)
        elif not again:  # a continued MLflow run has its params (MLflow never changes one)
            logger.log_hyperparams(hparams)
    return loggers


def quiet_writer_threads() -> None:
    """TensorBoard's writer thread raises a failed write (a full disk, a removed folder) in
    its own thread, which Python prints as a traceback, and again in the run's thread at the
    next flush, where the run or the sweep says it in one line: the thread's is left unsaid."""
    hook = threading.excepthook
    if getattr(hook, "zeroinit", False):
        return

    def quiet(args):
        if type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(
            args.exc_value, OSError
        ):
            return
        hook(args)

    quiet.zeroinit = True
    threading.excepthook = quiet


def absolute_sqlite(uri: str) -> str:
    """sqlite:///outputs/mlflow.db with the path made absolute. MLflow keeps one store per
    URI in a process, with its open connections: a relative one would stay bound to the
    first working directory (a notebook that changes it, a test)."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + os.path.abspath(uri[len(prefix) :])


def run_ids(cfg: DictConfig, loggers: list) -> dict:
    """{conf/logger key: run id} of the loggers a resume must continue (MLflow, W&B)."""
    keys = [k for k, spec in (cfg.get("logger") or {}).items() if spec]
    out = {}
    for key, logger in zip(keys, loggers):
        if isinstance(logger, MLFlowLogger):
            out[key] = logger.run_id
        elif isinstance(logger, WandbLogger):
            out[key] = logger.experiment.id
    return out


def known_runs(run_dir) -> dict:
    """{conf/logger key: run id} an earlier attempt of the run in `run_dir` made ({} if none)."""
    path = Path(run_dir) / RUNS_FILE
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return runs if isinstance(runs, dict) else {}


def keep_runs(run_dir, runs: dict) -> None:
    """The run's logger ids in `run_dir`, beside what a set-aside results.json would take."""
    if runs:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        with replaced_atomically(Path(run_dir) / RUNS_FILE, fsync=False) as f:
            json.dump(runs, f)


def set_aside_runs(loggers: list, earlier: dict, now: dict) -> None:
    """Mark the MLflow runs of an earlier attempt (`earlier`, by logger key) deleted, tagged
    why, where the new attempt (`now`) has another. W&B offline runs cannot be deleted from
    here: the started-over run is a new W&B run beside the earlier one."""
    by_id = {now[key]: key for key in now}
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        key = by_id.get(logger.run_id)
        old = earlier.get(key)
        if not old or old == logger.run_id:
            continue
        client = logger.experiment
        try:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            client.set_tag(old, "zeroinit.set_aside", f"{stamp}: started over as {logger.run_id}")
            client.delete_run(old)
        except Exception as e:  # not in this store (the URI changed): nothing to set aside
            log.warning("MLflow run %s of an earlier attempt not set aside: %s", old, e)


def log_scalars(loggers: list, metrics: dict, step: int) -> None:
    """`metrics` ({tag: number}) at `step` to every logger."""
    for logger in loggers:
        logger.log_metrics(metrics, step=step)


def tensorboard(loggers: list):
    """The SummaryWriter of the set's TensorBoard logger, for what only it shows; else None."""
    return next((lg.experiment for lg in loggers if isinstance(lg, TensorBoardLogger)), None)


def finalize(loggers: list, status: str) -> None:
    """What Lightning does to a trainer's loggers when a fit ends (stacked members' loggers
    are not the trainer's): flush, close, mark the MLflow/W&B run finished or failed."""
    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish(exit_code=0 if status == "success" else 1)


def tensorboard_header(logger: TensorBoardLogger, hparams: dict, config: dict) -> None:
    """HPARAMS: the keys that define the experiment, with test/acc and test/loss as its
    metric columns; TEXT: the whole resolved config (also in results.json)."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    # Written directly: Lightning's log_hyperparams wants a metric value, which it logs at
    # step 0 (a fake 0 at the start of every curve). The columns read the test/* scalars.
    experiment, *session = hparams_summary(hparams, {"test/acc": 0, "test/loss": 0})
    logger.hparams.update(hparams)  # what Lightning writes to the run's hparams.yaml
    # TensorBoard's table shows 5 columns at first, those marked `differs` first: what a sweep
    # varies (the keys of a run's name but the dataset, which starts the name) and the epochs,
    # so a 1-epoch try does not pass for a 10-epoch run.
    meta = experiment.value[0].metadata.plugin_data
    data = plugin_data_pb2.HParamsPluginData.FromString(meta.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in SHOWN_HPARAMS
    meta.content = data.SerializeToString()
    for summary in (experiment, *session):
        logger.experiment.file_writer.add_summary(summary)
    text = OmegaConf.to_yaml(OmegaConf.create(config))
    logger.experiment.add_text("config", "    " + text.replace("\n", "\n    "))  # Markdown code


def experiment_hparams(cfg: DictConfig) -> dict:
    """What tells runs apart: TensorBoard's HPARAMS table, MLflow's params, W&B's config.
    Integers as text: the table shows numbers as floats ('3.0000'), a seed should read '3'."""
    settings = speed.settings_of(cfg.get("speed"))
    precision = str(cfg.trainer.get("precision"))
    speed_name = (
        "+".join(
            [
                *([precision] if precision != "32-true" else []),
                *(k for k in speed.SWITCHES if settings[k]),
            ]
        )
        or "fp32"
    )
    values = {
        "dataset": cfg.dataset.name,
        "model": cfg.model.name,
        "init": cfg.init.name,
        "init.weight": cfg.init.weight,
        "init.bias": cfg.init.bias,
        "init.bias_scale": float(cfg.init.bias_scale),
        "seed": cfg.seed,
        "optimizer": str(cfg.optimizer.get("_target_", "")).rsplit(".", 1)[-1],
        "optimizer.lr": cfg.optimizer.get("lr"),
        "batch_size": cfg.batch_size,
        "epochs": cfg.trainer.max_epochs,
        "activation": cfg.model.get("activation"),
        "speed": speed_name,
    }
    return {
        k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in values.items()
        if v is not None
    }


class WandbRun(WandbLogger):
    """Lightning's WandbLogger, one W&B run per logger: Lightning's reuses whatever run the
    process already has (`wandb.run`), which would merge a stack's members, or a notebook's
    successive runs, into one."""

    @property
    def experiment(self):
        if self._experiment is None:
            import wandb

            if self._offline:
                os.environ["WANDB_MODE"] = "offline"
            os.environ.setdefault("WANDB_SILENT", "true")  # its banner, every run of a sweep
            settings = {k: v for k, v in self._wandb_init.items() if v is not None}
            self._experiment = wandb.init(**{**settings, "reinit": "create_new"})
            self._experiment.define_metric("trainer/global_step")
            self._experiment.define_metric("*", step_metric="trainer/global_step", step_sync=True)
        return self._experiment

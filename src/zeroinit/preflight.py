"""Before a -m sweep starts any run: what all of its runs share, checked once.

Every run of a sweep reads a dataset and writes under the sweep's folder. Without this, a
missing dataset failed every run the same way, one after the other (`make sweep-cifar` without
CIFAR-10: 75 runs, 150 lines of the same error, each run waiting for its own download
time-out). `Preflight.on_multirun_start`, a Hydra callback (conf/hydra/default.yaml), runs in
the process that starts the sweep before the sweeper launches anything, whichever launcher then
runs the jobs (basic, joblib, submitit, ...). A problem is one `error:` line and exit code 2,
with nothing created. A dataset whose files are missing is downloaded here, once for the whole
sweep, if its config allows it (`dataset.download`); the runs themselves never download
(data.NO_DOWNLOAD_ENV).
"""

import difflib
import inspect
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from zeroinit import data
from zeroinit.config import check_device, validate
from zeroinit.errors import UserError, check
from zeroinit.files import replaced_atomically, shown_path
from zeroinit.keys import NOT_DATA, NOT_IDENTITY

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _sweep_overrides(config: DictConfig):
    """The sweep's parsed overrides, as Hydra's BasicSweeper sees them (its `params` + the
    command line's overrides)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        params = {}  # another sweeper's params mean something else; the command line still counts
    lines = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    loader = GlobalHydra.instance().config_loader()
    return loader, OverridesParser.create(config_loader=loader).parse_overrides(lines)


def sweep_size(config: DictConfig) -> int | None:
    """How many runs the sweep launches (a cartesian product of its sweep overrides), without
    composing any; None for a sweeper other than Hydra's basic one (optuna, ...)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    try:
        return len(BasicSweeper.split_arguments(_sweep_overrides(config)[1], None)[0])
    except (HydraException, OmegaConfBaseException):
        return None


def job_configs(config: DictConfig) -> list[DictConfig]:
    """One composed config for each distinct data-relevant combination of the sweep's jobs.

    The jobs are expanded as Hydra's BasicSweeper does (a cartesian product). Composing a
    config costs ~0.3 s, so only jobs that differ in a key outside NOT_DATA are composed; a
    sweep that varies none of them (every figure preset) is checked on the sweep's own config,
    composing nothing."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    loader, overrides = _sweep_overrides(config)
    relevant = {
        o.get_key_element()
        for o in overrides
        if o.is_sweep_override() and o.key_or_group.split(".")[0] not in NOT_DATA
    }
    if not relevant:
        return [config]
    jobs = {}
    for job in BasicSweeper.split_arguments(overrides, None)[0]:
        jobs.setdefault(tuple(s for s in job if s.split("=", 1)[0] in relevant), job)
    return [loader.load_sweep_config(config, list(job)) for job in jobs.values()]


def dataset_of(cfg: DictConfig) -> tuple[str, str, bool] | None:
    """(source, data_dir, download) of a composed config; None for a dataset this project
    does not load itself."""
    node = cfg.get("dataset")
    if node is None or node.get("_target_") != "zeroinit.data.ImageDataModule":
        return None
    source = node.get("source")
    check(
        source in data.DATASETS,
        f"dataset.source: {source!r} is not one of {', '.join(data.DATASETS)}",
    )
    try:
        data_dir = OmegaConf.select(node, "data_dir", throw_on_missing=True)
    except MissingMandatoryValue:
        raise UserError(
            f"dataset.data_dir: not set; dataset={node.get('name', source)} needs "
            "dataset.data_dir=/path/to/the/files"
        ) from None
    return source, str(data_dir), bool(node.get("download", False))


def check_writable(out_dir, what: str = "the sweep writes its runs to") -> None:
    """The output folder can be created (or is there) and written, without creating it: a
    file is written and removed in the nearest folder that exists (permissions alone say
    yes to root in /proc)."""
    path = Path(out_dir).absolute()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    problem = "not a folder" if not probe.is_dir() else None
    if problem is None:
        try:
            with tempfile.TemporaryFile(dir=probe, prefix=".zeroinit-write-check-") as f:
                f.write(b"x")  # a byte: a full disk still creates empty files
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            problem = f"not writable ({e.strerror or type(e).__name__})"
    check(
        problem is None,
        f"paths.log_dir: {what} {out_dir}, but {probe} is {problem}; "
        "set paths.log_dir to a folder you can write",
    )


# Keys of a user's own, recorded with the run's config and read by nothing:
#   python src/train.py +notes.why="lr probe" +tags.batch=3
FREE_KEYS = ("notes", "tags")


def check_added_keys(config: DictConfig) -> None:
    """A key added on the command line (`+key=value`) that no part of the run would read is
    an error, not a silent no-op: `+lr=0.01` would train with the default learning rate in a
    folder named after 0.01. A key under a node built from a `_target_` (trainer, optimizer,
    model, dataset, ...) must be one of that class's arguments; elsewhere nothing reads a key
    the config did not have. `notes.` and `tags.` are free."""
    for line in config.hydra.overrides.task:
        if not line.startswith("+"):
            continue
        key = line.lstrip("+").split("=", 1)[0]
        if key.split(".")[0] in (*FREE_KEYS, "hydra", "callbacks"):  # callbacks: new nodes
            continue
        problem = _unread(config, key)
        if problem:
            raise UserError(problem)


def _unread(config: DictConfig, key: str) -> str | None:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        node = node.get(part) if isinstance(node, DictConfig) else None
        if not isinstance(node, DictConfig):
            break
        if "_target_" in node:
            params = _arguments(node)
            if params is None or parts[i + 1] in params:
                return None
            prefix = ".".join(parts[: i + 1])
            near = _nearest(key, [f"{prefix}.{p}" for p in params])
            return (
                f"{key}: {node._target_} takes no argument {parts[i + 1]!r}, so nothing "
                f"would read it{near}"
            )
    near = _nearest(key, _known_keys(config))
    return (
        f"{key}: not a key of this config, so nothing would read it{near}; a label of "
        f"your own goes under notes. or tags.: +notes.{parts[-1]}=..."
    )


def _arguments(node: DictConfig) -> list[str] | None:
    """The keyword arguments of the class a node builds; None if it takes any (**kwargs) or
    cannot be found."""
    from hydra.utils import get_class, get_method

    target = str(node._target_)
    try:
        obj = get_class(target)
    except Exception:  # noqa: BLE001 - a function (a partial's target), or not found
        try:
            obj = get_method(target)
        except Exception:  # noqa: BLE001 - not found: the run itself says so
            return None
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _known_keys(config: DictConfig) -> list[str]:
    from zeroinit.config import flatten

    plain = {k: v for k, v in OmegaConf.to_container(config, resolve=False).items() if k != "hydra"}
    keys = list(flatten(plain))
    for name in ("trainer", "optimizer", "model", "dataset"):
        node = config.get(name)
        if isinstance(node, DictConfig) and "_target_" in node:
            keys += [f"{name}.{p}" for p in _arguments(node) or []]
    return sorted(set(keys))


def _nearest(key: str, candidates: list[str]) -> str:
    candidates = [c for c in candidates if c != key]  # the config holds the added key itself
    last = key.split(".")[-1]
    same = [c for c in candidates if c.split(".")[-1] == last]
    found = same[:1] or difflib.get_close_matches(key, candidates, n=1, cutoff=0.8)
    return f" (did you mean {found[0]}?)" if found else ""


def check_parts(config: DictConfig, input_shape=None, num_classes=None) -> None:
    """What the run builds from the config, built here first so that a value torch or
    Lightning rejects is one line naming the key: Lightning's precision, and the model with
    its optimizer (on the meta device: nothing allocated). Without a shape (a dataset read
    only by the run) only the precision."""
    import torch

    from zeroinit import perturb, speed
    from zeroinit.config import build, build_model

    precision = config.trainer.get("precision")
    try:
        from lightning.fabric.connector import _convert_precision_to_unified_args
    except ImportError:  # another Lightning: the trainer says so itself
        _convert_precision_to_unified_args = None
    if _convert_precision_to_unified_args is not None and precision is not None:
        try:
            _convert_precision_to_unified_args(precision)
        except ValueError:
            raise UserError(
                f"trainer.precision: {precision!r} is not allowed; allowed: "
                "32-true (the default), 64-true, bf16-mixed, 16-mixed, bf16-true, "
                "16-true"
            ) from None
    build(config.init)  # InitScheme checks its values when built
    perturbation = perturb.of(config)  # and Perturbation
    if not input_shape or not num_classes:
        return
    with torch.device("meta"):
        try:
            net = build_model(config, input_shape, num_classes)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the constructor says, as one line
            raise UserError(
                f"model: {config.model.get('name')} cannot be built from these "
                f"settings: {_reason(e)}"
            ) from None
        perturbation.check_model(net)
        try:
            build(config.optimizer)(net.parameters())
            # with speed.fused_optimizer, on a real parameter (a fused step refuses meta)
            speed.optimizer(build(config.optimizer), config.get("speed"))(
                [torch.nn.Parameter(torch.zeros(1))]
            )
        except Exception as e:  # noqa: BLE001 - torch.optim's own checks (momentum < 0, ...)
            target = str(config.optimizer.get("_target_", "the optimizer"))
            raise UserError(f"optimizer: {target} rejects these settings: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    while e.__cause__ is not None:  # Hydra's InstantiationException wraps the real one
        e = e.__cause__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


LOGGER_PACKAGES = {"MLFlowLogger": "mlflow", "WandbLogger": "wandb", "WandbRun": "wandb"}


def check_loggers(config: DictConfig) -> None:
    """Every logger's class exists and its package is installed (`logger=mlflow` without
    mlflow: one line saying what to install), and an MLflow SQLite store has its tables
    before parallel runs would race to create them."""
    import importlib.util

    from hydra.utils import get_class

    for key, spec in (config.get("logger") or {}).items():
        if not spec:
            continue
        target = str(spec.get("_target_"))
        package = LOGGER_PACKAGES.get(target.rsplit(".", 1)[-1])
        if package and importlib.util.find_spec(package) is None:
            raise UserError(
                f"logger.{key}: {package} is not installed; pip install -e '.[{package}]'"
            )
        try:
            get_class(target)
        except Exception as e:  # noqa: BLE001 - any reason the class is not there
            raise UserError(f"logger.{key}._target_: {target!r} cannot be imported ({e})")
        if package == "mlflow":
            check_mlflow_uri(key, str(OmegaConf.select(spec, "tracking_uri")))
        elif package == "wandb":
            check_wandb_online(key, spec)


SERVER_TIMEOUT_S = 5  # a logger's server (MLflow, W&B) that does not answer by then is not there


def check_mlflow_uri(key: str, uri: str) -> None:
    """The tracking URI is usable, said in one line within seconds: MLflow itself retries an
    unreachable server for minutes and a read-only SQLite file for hours, silently. A new
    SQLite store gets its tables here, before parallel runs would race to create them."""
    from zeroinit.loggers import absolute_sqlite

    uri = absolute_sqlite(uri)
    allowed = "allowed: sqlite:///<folder>/mlflow.db (the default) or http(s)://host:port"
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(path, os.W_OK) if path.exists() else os.access(path.parent, os.W_OK)
        check(
            writable,
            f"logger.{key}.tracking_uri: {uri} is read-only (MLflow would retry for hours); "
            f"{allowed}, in a folder this user can write",
        )
        import fcntl

        from mlflow import MlflowClient

        # one process at a time creates a new store's tables: two sweeps started together
        # raced to ("table already exists", CircularDependencyError)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    elif uri.startswith(("http://", "https://")):
        reason = unanswered(uri.rstrip("/") + "/health")
        check(
            reason is None,
            f"logger.{key}.tracking_uri: {uri} does not answer within {SERVER_TIMEOUT_S} s "
            f"({reason}); start the server or use another store; {allowed}",
        )
    else:  # file:// or a bare folder: MLflow 3's file store, in maintenance, refuses runs
        raise UserError(
            f"logger.{key}.tracking_uri: {uri!r} is MLflow's file store, which MLflow 3 keeps "
            f"in maintenance and refuses; {allowed}"
        )


def unanswered(url: str) -> str | None:
    """None if a server answers `url` within SERVER_TIMEOUT_S (any HTTP status), else why not."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=SERVER_TIMEOUT_S)
    except urllib.error.HTTPError:
        return None  # it answered: a server is there (its route may differ)
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", e))
    return None


def wandb_base_url() -> str:
    """W&B's server: the one `wandb login --host` saved (its settings file), else W&B's own."""
    import configparser

    folder = os.environ.get("WANDB_CONFIG_DIR") or os.path.expanduser("~/.config/wandb")
    settings = configparser.ConfigParser()
    settings.read(os.path.join(folder, "settings"))
    return settings.get("default", "base_url", fallback="https://api.wandb.ai")


def check_wandb_online(key: str, spec) -> None:
    """W&B logging live (offline=false) needs its server: without one, every run would wait
    for it in wandb.init. Said in one line within seconds instead."""
    if spec.get("offline", True) is not False:
        return
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return  # W&B itself will not reach for a server
    url = os.environ.get("WANDB_BASE_URL") or wandb_base_url()
    reason = unanswered(url)
    check(
        reason is None,
        f"logger.{key}.offline: false, but {url} does not answer within {SERVER_TIMEOUT_S} s "
        f"({reason}); allowed: logger.{key}.offline=true (the default: `wandb sync` uploads "
        "later) or a network that reaches it",
    )


def check_run(config: DictConfig) -> None:
    """What a single run (no -m) needs, checked before Hydra makes its folder, so a bad
    command line leaves nothing behind: the config's values, the device, the output folder,
    the dataset, read as the run reads it (and kept in memory for it: data.read), and the
    model, its optimizer and init scheme, built on the meta device (nothing allocated), and
    no key that nothing reads."""
    validate(config)
    check_added_keys(config)
    check_device(config)
    check_writable(config.hydra.run.dir, what="the run writes to")
    found = dataset_of(config)
    if found is None:
        check_parts(config)
    else:
        source, data_dir, download = found
        train, _, classes = data.read(
            source, data_dir, download and not os.environ.get(data.NO_DOWNLOAD_ENV)
        )
        check_parts(config, train[0].shape[1:], len(classes))
    check_loggers(config)  # last: an MLflow store may be created


SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_sweep_name(name) -> None:
    """sweep_name names one folder under outputs/sweeps/: a path (../x), '' or '.' would
    write elsewhere or into the sweeps' own folder."""
    check(
        isinstance(name, str) and SWEEP_NAME.fullmatch(name) is not None,
        f"sweep_name: {name!r} is not allowed; allowed: a folder name of letters, digits, "
        "'.', '_' and '-' (1-200 characters, starting with a letter or digit), e.g. "
        "sweep_name=my_study",
    )


def check_sweep(config: DictConfig) -> list[tuple[str, str]]:
    """Raise UserError if a sweep's runs could not start; returns the datasets it checked.
    A dataset is read as its runs read it (data.read: checksums, formats), and stays in memory
    for the runs in this process."""
    check_sweep_name(config.get("sweep_name"))  # before anything is written under it
    check_launcher(config)
    check_default_sweep(config)
    validate(config)  # the values every job shares (swept ones are checked per run)
    check_added_keys(config)
    check_writable(config.hydra.sweep.dir)
    dataset = config.get("dataset") or {}
    check_parts(config, dataset.get("input_shape"), dataset.get("num_classes"))
    try:
        configs = job_configs(config)
    except (HydraException, OmegaConfBaseException):
        configs = [config]  # a job that does not compose: the sweeper says so itself
    if runs_here(config):  # a SLURM sweep's jobs run on nodes with devices of their own
        for job in configs:
            check_device(job)
    datasets = {}  # one check per distinct dataset; downloaded if any of its jobs allows it
    for source, data_dir, download in filter(None, map(dataset_of, configs)):
        key = (source, str(Path(data_dir).resolve()))
        allowed = download or (key in datasets and datasets[key][2])
        datasets[key] = (source, data_dir, allowed)
    for source, data_dir, download in datasets.values():
        data.read(source, data_dir, download)
    check_loggers(config)  # last: an MLflow store may be created
    return [(source, data_dir) for source, data_dir, _ in datasets.values()]


def runs_here(config: DictConfig) -> bool:
    """Whether the sweep's jobs train on this machine (not on SLURM's nodes)."""
    target = str(OmegaConf.select(config, "hydra.launcher._target_") or "").lower()
    return "slurm" not in target  # submitit's LocalLauncher (launcher=slurm_local) runs here


DEFAULT_SWEEP = "default"
COMMAND_FILE = "command.json"  # the default sweep folder's command (check_default_sweep)
# Overrides that do not make another experiment: where and how its runs run, what they log,
# and the seeds (more seeds extend a sweep).
NOT_COMMAND = ("seed", "trainer", "launcher", "logger", "hydra/launcher", "callbacks")


def sweep_command(config: DictConfig) -> list[str]:
    """The command line's overrides that say which experiment a sweep is (sorted)."""
    kept = []
    for override in OmegaConf.select(config, "hydra.overrides.task") or []:
        key = override.split("=", 1)[0].lstrip("+~")
        if key in NOT_COMMAND or key.startswith((*NOT_IDENTITY, "hydra.", "logger.", "launcher.")):
            continue
        kept.append(override)
    return sorted(kept)


def check_launcher(config: DictConfig) -> None:
    """The stacked launchers' settings (hydra.launcher.stack_size, workers)."""
    launcher = OmegaConf.select(config, "hydra.launcher") or {}
    if "stack_size" in launcher or "workers" in launcher:
        from zeroinit.stacked.size import check_settings

        check_settings(launcher.get("stack_size"), launcher.get("workers"))


def check_default_sweep(config: DictConfig) -> None:
    """A -m command without a sweep_name lands in outputs/sweeps/default. Another command's
    runs there would be skipped as finished or drawn beside this one's in a report, so the
    folder keeps the command that made it and refuses a different one in one line (a named
    sweep may hold several commands on purpose: a study's arms). Writes nothing."""
    if config.get("sweep_name") != DEFAULT_SWEEP or any(
        o.lstrip("+").startswith("sweep_name=")
        for o in OmegaConf.select(config, "hydra.overrides.task") or []
    ):
        return
    saved = Path(config.hydra.sweep.dir) / COMMAND_FILE
    if not saved.exists():
        return
    try:
        before = json.loads(saved.read_text())["overrides"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # unreadable: written again when this sweep starts
    now = sweep_command(config)
    if before != now:
        shown = lambda o: " ".join(o) or "(no overrides)"  # noqa: E731
        raise UserError(
            f"sweep_name: {shown_path(config.hydra.sweep.dir)} holds the sweep of another command "
            f"({shown(before)}), not of this one ({shown(now)}): give it its own "
            "sweep_name=<name> (rerunning that command resumes it)"
        )


def save_default_sweep(config: DictConfig) -> None:
    """The default sweep folder's command, once its checks passed."""
    if config.get("sweep_name") != DEFAULT_SWEEP:
        return
    folder = Path(config.hydra.sweep.dir)
    if (folder / COMMAND_FILE).exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with replaced_atomically(folder / COMMAND_FILE) as f:
        json.dump({"overrides": sweep_command(config)}, f, indent=2)


class Preflight(Callback):
    """Hydra callback: check_sweep before the first run of a -m sweep, check_run before a
    single run."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # run_job sets it later: the run's folder
        try:  # name needs it now
            check_run(config)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None  # Hydra turns exceptions here into warnings
        except OmegaConfBaseException:
            pass  # a config that does not resolve: the run says so itself

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        os.environ[data.NO_DOWNLOAD_ENV] = "1"  # inherited by every job, whatever runs it
        try:
            check_sweep(config)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None  # Hydra turns exceptions here into warnings
        save_default_sweep(config)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        os.environ.pop(data.NO_DOWNLOAD_ENV, None)

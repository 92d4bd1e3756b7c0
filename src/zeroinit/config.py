"""Turning a composed config into objects, checking what Hydra cannot check itself."""

import hashlib
import math
import os
import re
from pathlib import Path

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zeroinit.errors import UserError, check

MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; Lightning's seed_everything takes this range


def build(node: DictConfig, ignore=(), **kwargs):
    """hydra.utils.instantiate of the resolved `node`, minus `ignore`d keys (labels such as a
    model's `name`, which its class does not take)."""
    spec = OmegaConf.to_container(
        OmegaConf.create(node) if isinstance(node, dict) else node, resolve=True
    )
    for key in ignore:
        spec.pop(key, None)
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):  # a constructor's own check: keep its message
            raise e.__cause__ from None
        raise


def build_model(cfg: DictConfig, input_shape, num_classes):
    """The run's network (conf/model) for a dataset of `input_shape` (C, H, W) and
    `num_classes`: how every part of the project builds a model (the model's `name` is a
    label, not an argument)."""
    return build(
        cfg.model, ignore=["name"], input_shape=tuple(input_shape), num_classes=int(num_classes)
    )


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a resolved config as dotted keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


REQUIRED_GROUPS = ("dataset", "model", "init", "optimizer", "trainer")
CONF_DIR = Path(__file__).resolve().parent.parent.parent / "conf"
GROUP_HINTS = {"bias_scale": "; a number: init.bias_scale=<x>"}


def check_group_choices(overrides, conf_dir: Path = CONF_DIR) -> None:
    """Each config group option on the command line (`model=foo`, `-m init=zero,nope`,
    `logger=[tensorboard,nope]`) is a file of conf/<group>/: else one UserError line naming
    the group and its options, before Hydra (whose own message is a dozen lines). Options
    from another config folder (--config-dir, hydra.searchpath) are left to Hydra, and so is
    what Hydra's grammar refuses."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    elsewhere = ("--config-dir", "-cd", "--config-path", "-cp", "hydra.searchpath")
    if any(word.lstrip("+").startswith(elsewhere) for word in overrides):
        return
    parser = OverridesParser.create()
    for word in overrides:
        key = word.partition("=")[0].lstrip("+~")
        if word.startswith("-") or "=" not in word or not (conf_dir / key).is_dir():
            continue  # a flag, a value (model.activation=...), not a group
        try:
            value = parser.parse_override(word).value()
        except Exception:  # noqa: BLE001 - Hydra's grammar: Hydra says what is wrong
            continue
        options = sorted(p.stem for p in (conf_dir / key).glob("*.yaml"))
        for choice in _named(value):
            check(
                choice in options,
                f"{key}: {choice!r} is not one of conf/{key}/: {', '.join(options)}"
                + GROUP_HINTS.get(key, ""),
            )


def _named(value):
    """The option names in a parsed override value: a name, a list of names (logger=[a,b]),
    a sweep of either (a,b / choice(...)); none in null or a range."""
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _named(v)
    elif type(value).__name__ == "ChoiceSweep":
        yield from _named(value.list)
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        yield str(value)


def _devices_allowed(devices) -> bool:
    """Lightning's `devices`: "auto", a count >= 1 or -1 (all), device indices as a list or a
    string "0,1"."""
    if devices is None or devices == "auto":
        return True
    if isinstance(devices, bool):
        return False
    if isinstance(devices, int):
        return devices >= 1 or devices == -1
    if isinstance(devices, str):
        parts = devices.strip().rstrip(",").split(",")
        return devices.strip() == "-1" or all(p.strip().isdigit() for p in parts)
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices) > 0 and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices
        )
    return False


def validate(cfg: DictConfig) -> None:
    """The checks a bad command line should fail before anything is written."""
    for group in REQUIRED_GROUPS:
        check(
            isinstance(cfg.get(group), DictConfig),
            f"{group}: missing (removed with ~{group}?); allowed: one of conf/{group}/, "
            f"e.g. {group}=<name>",
        )
    devices = cfg.trainer.get("devices")
    if str(cfg.trainer.get("accelerator")) == "cpu":  # Lightning: a number of processes
        check(
            devices in (None, "auto")
            or (isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1)
            or (isinstance(devices, str) and devices.isdigit() and int(devices) >= 1),
            f"trainer.devices: {devices!r} is not allowed with trainer.accelerator=cpu; "
            "allowed: auto or a number >= 1",
        )
    check(
        _devices_allowed(devices),
        f"trainer.devices: {devices!r} is not allowed; allowed: auto, a number of devices "
        ">= 1, -1 (all), or device indices such as [0, 1]",
    )
    epochs = cfg.trainer.get("max_epochs")
    check(
        isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0,
        f"trainer.max_epochs: {epochs!r} is not allowed; allowed: an integer > 0",
    )
    check(
        isinstance(cfg.batch_size, int)
        and not isinstance(cfg.batch_size, bool)
        and cfg.batch_size > 0,
        f"batch_size: {cfg.batch_size!r} is not allowed; allowed: an integer > 0",
    )
    check(
        isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and 0 <= cfg.seed <= MAX_SEED,
        f"seed: {cfg.seed!r} is not allowed; allowed: an integer from 0 to {MAX_SEED} "
        "(what torch, numpy and Lightning seed with)",
    )
    lr = (cfg.get("optimizer") or {}).get("lr")
    check(
        lr is None or (_is_number(lr) and math.isfinite(lr) and lr > 0),
        f"optimizer.lr: {lr!r} is not allowed; allowed: a finite number > 0",
    )
    # Lightning clips and accumulates gradients only where it steps the optimizer itself; the
    # module does (zeroinit.module: automatic_optimization is off)
    for key, off in (("gradient_clip_val", 0), ("accumulate_grad_batches", 1)):
        value = cfg.trainer.get(key)
        check(
            value is None or (_is_number(value) and value == off),
            f"trainer.{key}: {value!r} is not supported (the module steps the optimizer "
            f"itself, once per batch); allowed: null or {off}",
        )
    fused = (cfg.get("speed") or {}).get("fused_optimizer")
    check(
        not (fused and str(cfg.trainer.get("precision")).startswith("16")),
        f"speed.fused_optimizer: true is not supported with trainer.precision="
        f"{cfg.trainer.get('precision')} (the gradient scaler would leave the gradients the "
        "diagnostics read scaled); allowed: speed.fused_optimizer=false, or bf16-mixed",
    )
    every = cfg.get("checkpoint_every_min")
    check(
        every is None or (_is_number(every) and math.isfinite(every) and every >= 0),
        f"checkpoint_every_min: {every!r} is not allowed; allowed: minutes > 0, or 0 or null (off)",
    )
    # a run that trains on no batch ends with NaN losses as if it had completed
    limit = cfg.trainer.get("limit_train_batches")
    check(
        limit is None
        or (isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1)
        or (isinstance(limit, float) and 0 < limit <= 1),
        f"trainer.limit_train_batches: {limit!r} is not allowed; allowed: a number of "
        "batches >= 1, or a fraction of the epoch in (0, 1]",
    )
    batchnorm = (cfg.get("model") or {}).get("batchnorm")
    check(
        batchnorm is None or isinstance(batchnorm, bool),
        f"model.batchnorm: {batchnorm!r} is not allowed; allowed: true or false",
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_device(cfg: DictConfig) -> None:
    """The device the trainer asks for is there. Checked where the run trains (a SLURM login
    node that starts a sweep has no GPU; its compute nodes do)."""
    accelerator = str(cfg.trainer.get("accelerator"))
    if accelerator in ("gpu", "cuda"):
        import torch

        check(
            torch.cuda.is_available(),
            f"trainer.accelerator: {accelerator} (trainer=gpu or ddp), but this machine has "
            "no GPU that torch can use (torch.cuda.is_available() is false); allowed here: "
            "trainer=cpu, or trainer=default (the GPU when there is one, else the CPU)",
        )


def format_scale(scale) -> str:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        return str(scale)
    return f"{value:g}" if math.isfinite(value) else str(value)


MAX_NAME_BYTES = 230  # 255 a file name, less what the sweep adds to it: .<name>.json.<tmp>.tmp


LONG_NUMBER = re.compile(r"(?<==)-?\d+\.\d{6,}(?:e[-+]?\d+)?(?=,|$)")


def run_name(dataset, model, init, bias_scale, overrides, seed) -> str:
    """dataset-model-init-x<bias scale>[-<other overrides>]-s<seed>: a run's directory name
    and its name in TensorBoard. Overrides that would make it longer than MAX_NAME_BYTES are
    cut and end in a hash of all of them (stable: the same overrides, the same folder); the
    full list is in the folder's .hydra/overrides.yaml and results.json."""
    extra = re.sub(r"[^\w.,=+-]", "_", str(overrides or ""))
    head = [str(dataset), str(model), str(init), f"x{format_scale(bias_scale)}"]
    tail = f"s{seed}"
    # A search's values (optimizer.lr=0.0012345678901234) read rounded to 4 digits, with a
    # hash of the exact ones so that two values rounding alike keep two folders.
    short = LONG_NUMBER.sub(lambda m: f"{float(m.group(0)):.4g}", extra)
    parts = [short, hashlib.sha1(extra.encode()).hexdigest()[:6]] if short != extra else [extra]
    name = "-".join([*head, *filter(None, parts), tail])
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha1(extra.encode()).hexdigest()[:10]
    room = MAX_NAME_BYTES - len("-".join([*head, "", f"{digest}-{tail}"]).encode()) - 1
    cut = extra.encode()[: max(room, 0)].decode(errors="ignore")
    return "-".join([*head, *([cut] if cut else []), f"{digest}", tail])


def gpus_for(accelerator) -> int | None:
    """GPUs per SLURM task for a trainer (conf/launcher/slurm.yaml): none for trainer=cpu,
    else one (one task = one run on one GPU). trainer=default ("auto": the GPU if there is
    one) asks for one too: the login node cannot see what the compute nodes have, and a run
    meant for a GPU that silently fell back to the CPU would take an order of magnitude
    longer."""
    return None if str(accelerator).lower() == "cpu" else 1


def register_resolvers() -> None:
    # Light on purpose: train.py registers these before Hydra parses the command line, and
    # `--help` should not wait for torch.
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("slurm_gpus"):  # conf/launcher/slurm.yaml
        OmegaConf.register_new_resolver("slurm_gpus", gpus_for)
    if not OmegaConf.has_resolver("basename"):  # conf/logger: a run's name is its folder's
        OmegaConf.register_new_resolver("basename", lambda path: os.path.basename(str(path)))


__all__ = [
    "UserError",
    "build",
    "build_model",
    "flatten",
    "validate",
    "check_device",
    "run_name",
    "register_resolvers",
    "gpus_for",
]

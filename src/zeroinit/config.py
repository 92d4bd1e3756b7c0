"""Turning a composed config into objects, checking what Hydra cannot check itself."""
import math
import re

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from zeroinit.errors import UserError, check


def build(node: DictConfig, ignore=(), **kwargs):
    """hydra.utils.instantiate of the resolved `node`, minus `ignore`d keys (labels such as a
    model's `name`, which its class does not take)."""
    spec = OmegaConf.to_container(OmegaConf.create(node) if isinstance(node, dict) else node,
                                  resolve=True)
    for key in ignore:
        spec.pop(key, None)
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, UserError):  # a constructor's own check: keep its message
            raise e.__cause__ from None
        raise


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: a resolved config as dotted keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate(cfg: DictConfig) -> None:
    """The checks a bad command line should fail before anything is written."""
    epochs = cfg.trainer.get("max_epochs")
    check(isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0,
          f"trainer.max_epochs: {epochs!r} is not allowed; allowed: an integer > 0")
    check(isinstance(cfg.batch_size, int) and not isinstance(cfg.batch_size, bool)
          and cfg.batch_size > 0,
          f"batch_size: {cfg.batch_size!r} is not allowed; allowed: an integer > 0")
    check(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool),
          f"seed: {cfg.seed!r} is not allowed; allowed: an integer")


def format_scale(scale) -> str:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        return str(scale)
    return f"{value:g}" if math.isfinite(value) else str(value)


def run_name(dataset, model, init, bias_scale, overrides, seed) -> str:
    """dataset-model-init-x<bias scale>[-<other overrides>]-s<seed>: a run's directory name
    and its name in TensorBoard."""
    extra = re.sub(r"[^\w.,=+-]", "_", str(overrides or ""))
    return "-".join([str(dataset), str(model), str(init), f"x{format_scale(bias_scale)}",
                     *([extra] if extra else []), f"s{seed}"])


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_name"):
        OmegaConf.register_new_resolver("run_name", run_name)
    if not OmegaConf.has_resolver("slurm_gpus"):  # conf/launcher/slurm.yaml
        from zeroinit.slurm import gpus_for
        OmegaConf.register_new_resolver("slurm_gpus", gpus_for)


__all__ = ["UserError", "build", "flatten", "validate", "run_name", "register_resolvers"]

"""What `launcher=stacked` does with a sweep: compose every job as Hydra would, group the jobs
that can train as one stacked model, train each group with `train_group`, and run the rest
one by one through train.py's own job function (exactly as Hydra's basic launcher would).

Jobs form a group when their resolved configs are equal except for the keys a member may
have of its own (MEMBER_KEYS: seed, the init scheme with its bias scale, and the run's output
directory). A group also needs what stacking assumes: a network made of layers with stacked
twins (zeroinit.stacked.layers), an elementwise optimizer, one device, and no fp16 loss
scaler (one scaler would skip a step for every member when one member overflows).
"""
import copy
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (JobReturn, JobStatus, _save_config, configure_log, run_job,
                              setup_globals)
from omegaconf import OmegaConf, open_dict, read_write

from zeroinit.config import build
from zeroinit.errors import UserError
from zeroinit.results import FILENAME
from zeroinit.signals import STOPPED, interrupt_on_ctrl_c, leave
from zeroinit.stacked.group import train_group
from zeroinit.stacked.layers import StackError, stack_nets
from zeroinit.stacked.module import ELEMENTWISE_OPTIMIZERS
from zeroinit.stacked.size import check_setting, resolve
from zeroinit.sweep import (is_sweep_wide, position, record_outcome, skip_if_stopped,
                            started_here, stop_sweep, stopped, summary_so_far)

log = logging.getLogger("zeroinit")
MEMBER_KEYS = ("seed", "init", "paths.output_dir")


class Job:
    """One job of the sweep: Hydra's config for it, and the run's resolved config."""

    def __init__(self, idx: int, config):
        self.idx, self.config = idx, config
        self.cfg = self.key = None  # resolved run config; group key (None: runs alone)
        self.stack_size = 1
        self.task_cfg = self.hydra_cfg = None
        self.overrides = list(OmegaConf.to_container(config.hydra.overrides.task))

    def prepare(self) -> None:
        """What hydra.core.utils.run_job does before the task function: the output directory
        and Hydra's runtime config; then resolve the run's config with it."""
        HydraConfig.instance().set_config(self.config)
        out_dir = os.path.join(str(OmegaConf.select(self.config, "hydra.sweep.dir")),
                               str(OmegaConf.select(self.config, "hydra.sweep.subdir")))
        with read_write(self.config.hydra.runtime), open_dict(self.config.hydra.runtime):
            self.config.hydra.runtime.output_dir = os.path.abspath(out_dir)
        HydraConfig.instance().set_config(self.config)
        self.task_cfg = copy.deepcopy(self.config)
        with read_write(self.task_cfg), open_dict(self.task_cfg):
            del self.task_cfg["hydra"]
        self.hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        try:
            self.cfg = OmegaConf.create(OmegaConf.to_container(self.task_cfg, resolve=True))
        except Exception as e:  # noqa: BLE001 - the normal path reports it, one job at a time
            log.debug("job %d not resolved: %s", self.idx, e)
            self.cfg = None

    def save_hydra_files(self) -> None:
        """.hydra/ as run_job writes it: config.yaml, hydra.yaml, overrides.yaml."""
        hydra_dir = Path(self.cfg.paths.output_dir) / str(self.config.hydra.output_subdir)
        _save_config(self.task_cfg, "config.yaml", hydra_dir)
        _save_config(self.hydra_cfg, "hydra.yaml", hydra_dir)
        _save_config(self.config.hydra.overrides.task, "overrides.yaml", hydra_dir)

    def job_return(self, value) -> JobReturn:
        ret = JobReturn(overrides=self.overrides, cfg=self.task_cfg, hydra_cfg=self.hydra_cfg,
                        working_dir=os.getcwd(), task_name=self.hydra_cfg.hydra.job.name,
                        status=JobStatus.COMPLETED)
        ret.return_value = value
        return ret


def group_key(cfg) -> str | None:
    """Jobs with equal keys train together; None: this job cannot be stacked."""
    t = cfg.trainer
    if ("ddp" in str(t.get("strategy", "")) or t.get("devices") not in (1, "1", None)
            or str(t.get("precision")) in ("16", "16-mixed", "16-true")
            or cfg.optimizer.get("_target_", "").rsplit(".", 1)[-1] not in ELEMENTWISE_OPTIMIZERS):
        return None
    shared = OmegaConf.to_container(cfg)
    for key in MEMBER_KEYS:
        *parents, leaf = key.split(".")
        node = shared
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    # Paths inside the run's own directory (the logger's save_dir, ...) differ by design.
    return json.dumps(shared, sort_keys=True, default=str).replace(
        json.dumps(str(cfg.paths.output_dir))[1:-1], "<run dir>")


def stackable_model(cfg) -> bool:
    """Whether the model is made of layers with stacked twins (checked on the meta device:
    nothing is allocated)."""
    shape, classes = cfg.dataset.get("input_shape"), cfg.dataset.get("num_classes")
    if not shape or not classes:
        return True  # unknown until the data is read; stack_nets says so then
    try:
        with torch.device("meta"):
            nets = [build(cfg.model, ignore=["name"], input_shape=tuple(shape),
                          num_classes=classes) for _ in range(2)]
            stack_nets(nets)
    except StackError as e:
        log.info("not stacked: %s", e)
        print(f"not stacked ({cfg.model.name}: {e}): these runs train one by one", flush=True)
        return False
    except Exception:  # noqa: BLE001 - a bad model config: the normal path reports it
        return False
    return True


def plan(jobs: list[Job], stack_size="auto") -> list[list[Job]]:
    """Jobs in groups, in the order of each group's first job; ungroupable jobs alone, and
    so are the jobs of a group where one at a time measured fastest (stack size 1: see
    zeroinit.stacked.size). A group's jobs carry its stack size."""
    groups: dict = {}
    for job in jobs:
        key = group_key(job.cfg) if job.cfg is not None else None
        groups.setdefault(key if key is not None else ("alone", job.idx), []).append(job)
    out = []
    for key, members in groups.items():
        if isinstance(key, str) and len(members) > 1 and stackable_model(members[0].cfg):
            size = resolve(stack_size, members[0].cfg, len(members))
            if size > 1:
                for job in members:
                    job.key, job.stack_size = key, size
                out.append(members)
                continue
        out += [[job] for job in members]
    return out


def launch(launcher, job_overrides, initial_job_idx) -> list[JobReturn]:
    try:  # before anything is written
        check_setting(launcher.stack_size)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i, overrides in enumerate(job_overrides):
        # composed once: the sweeper's check already did it (stacked_launcher.ComposedOnce)
        job_config = launcher.hydra_context.config_loader.take(config, list(overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = initial_job_idx + i
            job_config.hydra.job.num = initial_job_idx + i
        job = Job(initial_job_idx + i, job_config)
        job.prepare()
        jobs.append(job)
    interrupt_on_ctrl_c()  # Ctrl-C outside training: exit 130 with one line, too
    returns = {}
    for group in plan(jobs, launcher.stack_size):
        if group[0].key is not None and position(len(returns), len(group)):
            print(position(len(returns), len(group)), flush=True)  # a lone job prints its own
        if group[0].key is None:  # alone: train.py's job function, as the basic launcher
            job = group[0]
            returns[job.idx] = run_job(hydra_context=launcher.hydra_context,
                                       task_function=launcher.task_function,
                                       config=job.config, job_dir_key="hydra.sweep.dir",
                                       job_subdir_key="hydra.sweep.subdir")
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)
        else:
            returns.update(_launch_group(group, group[0].stack_size, sweep_dir))
    return [returns[job.idx] for job in jobs]


def _launch_group(group: list[Job], stack_size, sweep_dir) -> dict:
    if stopped(sweep_dir) is not None:  # a failure every run shares stopped the sweep
        for job in group:
            skip_if_stopped(sweep_dir, job.cfg.paths.output_dir)
        return {job.idx: job.job_return(None) for job in group}
    for job in group:
        Path(job.cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        job.save_hydra_files()
    returns = {}

    def report(i, outcome, results, error):
        job = group[i]
        out_dir = Path(job.cfg.paths.output_dir)
        if outcome == "failed" and not (out_dir / FILENAME).exists():
            shutil.rmtree(out_dir, ignore_errors=True)  # nothing half-written
            if error and error.startswith("UserError: "):
                print(f"error: {error[len('UserError: '):]}", flush=True)
        record_outcome(sweep_dir, out_dir, outcome, error,
                       resumed=outcome not in ("skipped", "busy")
                       and "resumed_from_epoch" in (results or {}))
        final = (results or {}).get("final") or {}
        if outcome == "busy":
            print(f"busy: {out_dir} is being trained by another process; left alone", flush=True)
        elif results is not None:
            print(f"{'skipped, already ' if outcome == 'skipped' else ''}{results['status']}: "
                  f"test_acc {final.get('test_acc', float('nan')):.4f}  "
                  f"test_loss {final.get('test_loss', float('nan')):.4f}  {out_dir.name}",
                  flush=True)
        returns[job.idx] = job.job_return(final.get("test_acc"))

    try:
        train_group([(job.cfg, job.overrides) for job in group], stack_size, on_outcome=report)
    except STOPPED as stop:  # SIGTERM & co.: each member saved its last epoch; say so, leave
        for job in group:
            if job.idx not in returns:
                record_outcome(sweep_dir, job.cfg.paths.output_dir, "interrupted", str(stop))
        leave(stop, f"{len(group)} stacked runs in {sweep_dir}",
              then=summary_so_far(sweep_dir) if started_here() else None)
    except Exception as e:  # noqa: BLE001 - train_group re-raises only sweep-wide failures
        if not is_sweep_wide(e):
            raise
        stop_sweep(sweep_dir, e)
    return {job.idx: returns.get(job.idx) or job.job_return(None) for job in group}

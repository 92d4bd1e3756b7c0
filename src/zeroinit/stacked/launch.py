"""What `launcher=stacked` does with a sweep: compose every job as Hydra would, group the jobs
that can train as one stacked model, train each group with `train_group`, and run the rest
one by one through train.py's own job function (exactly as Hydra's basic launcher would).

Jobs form a group when their resolved configs are equal except for the keys a member may
have of its own (zeroinit.keys.MEMBER_KEYS: seed, the init scheme with its bias scale, and
the run's output directory). A group also needs what stacking assumes: a network made of
layers with stacked twins (zeroinit.stacked.layers), an elementwise optimizer, one device,
and no fp16 loss scaler (one scaler would skip a step for every member when one member
overflows).
"""

import json
import logging
import os
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import (
    JobReturn,
    JobStatus,
    configure_log,
    run_job,
    setup_globals,
)
from omegaconf import OmegaConf, open_dict, read_write

from zeroinit.config import build_model
from zeroinit.errors import UserError
from zeroinit.keys import MEMBER_KEYS
from zeroinit.lifecycle import check_identity, finish, record
from zeroinit.signals import STOPPED, child_processes, forwarded_to, interrupt_on_ctrl_c, leave
from zeroinit.stacked.group import train_group
from zeroinit.stacked.layers import StackError, stack_nets
from zeroinit.stacked.module import ELEMENTWISE_OPTIMIZERS
from zeroinit.stacked.plan import assign, split, spread
from zeroinit.stacked.size import check_settings, check_workers, resolve
from zeroinit.sweep import (
    is_disk_error,
    is_sweep_wide,
    position,
    skip_if_stopped,
    started_here,
    stop_on_disk_error,
    stop_sweep,
    stopped,
    summary_so_far,
)

log = logging.getLogger("zeroinit")


class Job:
    """One job of the sweep: Hydra's config for it, and the run's resolved config."""

    def __init__(self, idx: int, config):
        self.idx, self.config = idx, config
        self.cfg = self.key = None  # resolved run config; group key (None: runs alone)
        self.task_cfg = self.hydra_cfg = None
        self.overrides = list(OmegaConf.to_container(config.hydra.overrides.task))

    def prepare(self) -> None:
        """What hydra.core.utils.run_job does before the task function: the output directory
        and Hydra's runtime config; then resolve the run's config with it."""
        HydraConfig.instance().set_config(self.config)
        out_dir = os.path.join(
            str(OmegaConf.select(self.config, "hydra.sweep.dir")),
            str(OmegaConf.select(self.config, "hydra.sweep.subdir")),
        )
        with read_write(self.config.hydra.runtime), open_dict(self.config.hydra.runtime):
            self.config.hydra.runtime.output_dir = os.path.abspath(out_dir)
        HydraConfig.instance().set_config(self.config)  # a fresh copy of the hydra node
        # The job's config without its hydra node, copied without copying that node first (it
        # is most of the config, and a sweep copies it once per job); Hydra's own copy, as it
        # is: each set_config makes a new one, which nothing changes afterwards.
        self.task_cfg = OmegaConf.masked_copy(self.config, [k for k in self.config if k != "hydra"])
        self.hydra_cfg = HydraConfig.instance().cfg
        try:
            self.cfg = OmegaConf.create(OmegaConf.to_container(self.task_cfg, resolve=True))
        except Exception as e:  # noqa: BLE001 - the normal path reports it, one job at a time
            log.debug("job %d not resolved: %s", self.idx, e)
            self.cfg = None

    def save_hydra_files(self) -> None:
        """.hydra/ as run_job writes it: config.yaml, hydra.yaml, overrides.yaml (the YAML
        Hydra writes, written here: Hydra's own writer is private)."""
        hydra_dir = Path(self.cfg.paths.output_dir) / str(self.config.hydra.output_subdir)
        hydra_dir.mkdir(parents=True, exist_ok=True)
        for name, node in (
            ("config.yaml", self.task_cfg),
            ("hydra.yaml", self.hydra_cfg),
            ("overrides.yaml", self.config.hydra.overrides.task),
        ):
            (hydra_dir / name).write_text(OmegaConf.to_yaml(node), encoding="utf-8")

    def job_return(self, value) -> JobReturn:
        ret = JobReturn(
            overrides=self.overrides,
            cfg=self.task_cfg,
            hydra_cfg=self.hydra_cfg,
            working_dir=os.getcwd(),
            task_name=self.hydra_cfg.hydra.job.name,
            status=JobStatus.COMPLETED,
        )
        ret.return_value = value
        return ret


def compose_jobs(config_loader, config, overrides: list, nums: list[int], job_id=None) -> list[Job]:
    """Each job of a sweep composed as Hydra's launchers compose it, numbered and prepared: the
    one loop of the stacked launcher and of SLURM's (the login node that plans the stacks, and
    the array task that trains one). `config_loader`: Hydra's, or the stacked sweeper's
    ComposedOnce, which hands back what the sweeper composed already. `job_id`: hydra.job.id
    (SLURM's job id in an array task; else the job's number)."""
    take = getattr(config_loader, "take", None) or config_loader.load_sweep_config
    jobs = []
    for job_overrides, num in zip(overrides, nums, strict=True):
        job_config = take(config, list(job_overrides))
        with open_dict(job_config):
            job_config.hydra.job.id = num if job_id is None else job_id
            job_config.hydra.job.num = num
        job = Job(num, job_config)
        job.prepare()
        jobs.append(job)
    return jobs


# Callbacks that hook the run's own layers (a stack's forward runs on the stacked net instead)
ALONE_CALLBACKS = ("border_split",)


def group_key(cfg) -> str | None:
    """Jobs with equal keys train together; None: this job cannot be stacked."""
    t = cfg.trainer
    if (
        "ddp" in str(t.get("strategy", ""))
        or t.get("devices") not in (1, "1", None)
        or str(t.get("precision")) in ("16", "16-mixed", "16-true")
        or cfg.optimizer.get("_target_", "").rsplit(".", 1)[-1] not in ELEMENTWISE_OPTIMIZERS
        or any((cfg.get("callbacks") or {}).get(name) for name in ALONE_CALLBACKS)
    ):
        return None
    shared = OmegaConf.to_container(cfg)
    for key in MEMBER_KEYS:
        *parents, leaf = key.split(".")
        node = shared
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    # Paths inside the run's own directory (the logger's save_dir, ...) and the run's name
    # (MLflow's and W&B's run names) differ by design.
    run_dir = str(cfg.paths.output_dir)
    return (
        json.dumps(shared, sort_keys=True, default=str)
        .replace(json.dumps(run_dir)[1:-1], "<run dir>")
        .replace(json.dumps(Path(run_dir).name)[1:-1], "<run name>")
    )


def stackable_model(cfg) -> bool:
    """Whether the model is made of layers with stacked twins (checked on the meta device:
    nothing is allocated)."""
    shape, classes = cfg.dataset.get("input_shape"), cfg.dataset.get("num_classes")
    if not shape or not classes:
        return True  # unknown until the data is read; stack_nets says so then
    try:
        with torch.device("meta"):
            nets = [build_model(cfg, shape, classes) for _ in range(2)]
            stack_nets(nets)
    except StackError as e:
        log.info("not stacked: %s", e)
        print(f"not stacked ({cfg.model.name}: {e}): these runs train one by one", flush=True)
        return False
    except Exception:  # noqa: BLE001 - a bad model config: the normal path reports it
        return False
    return True


def plan(jobs: list[Job], stack_size="auto", places: int = 1) -> list[list[list[Job]]]:
    """The stacks each place trains, in order (zeroinit.stacked.plan). Jobs group as
    group_key says; a group is cut at its stack size (zeroinit.stacked.size: 1 where one at a
    time measured fastest); a stack of one job is a job alone (key None), trained as the
    basic launcher would."""
    groups: dict = {}
    for job in jobs:
        key = group_key(job.cfg) if job.cfg is not None else None
        groups.setdefault(key if key is not None else ("alone", job.idx), []).append(job)
    stacks = []
    for key, members in groups.items():
        if isinstance(key, str) and len(members) > 1 and stackable_model(members[0].cfg):
            for job in members:
                job.key = key
            stacks += split(members, resolve(stack_size, members[0].cfg, len(members)))
        else:
            stacks += [[job] for job in members]
    schedule = assign(spread(stacks, places), places)
    for stack in (s for place in schedule for s in place):
        if len(stack) == 1:
            stack[0].key = None
    return schedule


def places_for(setting, jobs: list[Job]) -> int:
    """How many places train at once: `hydra.launcher.workers`, else one per GPU that torch
    sees when the runs ask for a GPU (trainer=default or gpu), else 1."""
    if setting not in (None, "auto"):
        check_workers(setting)
        return setting
    wants_gpu = any(
        job.cfg is not None and str(job.cfg.trainer.get("accelerator")) in ("auto", "gpu", "cuda")
        for job in jobs
    )
    return max(1, torch.cuda.device_count()) if wants_gpu and torch.cuda.is_available() else 1


def launch(launcher, job_overrides, initial_job_idx) -> list[JobReturn]:
    try:  # a direct caller's values; train.py's preflight checked them already
        check_settings(launcher.stack_size, launcher.workers)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    sweep_dir = Path(str(config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # composed once: the sweeper's check already did it (stacked_launcher.ComposedOnce)
    nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
    jobs = compose_jobs(launcher.hydra_context.config_loader, config, job_overrides, nums)
    interrupt_on_ctrl_c()  # Ctrl-C outside training: exit 130 with one line, too
    places = places_for(launcher.workers, jobs)
    schedule = [stacks for stacks in plan(jobs, launcher.stack_size, places) if stacks]
    if len(schedule) == 1:
        returns = train_place(
            schedule[0], launcher.hydra_context, launcher.task_function, config, count=True
        )
    else:
        returns = _train_places(schedule, launcher, config)
    return [returns[job.idx] for job in jobs]


def train_place(
    stacks: list[list[Job]], hydra_context, task_function, config, count: bool = False
) -> dict:
    """One place's stacks, one after another: {job index: JobReturn}. `count`: print each
    stack's position in the sweep and the ETA (one place trains the whole sweep)."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    returns: dict = {}
    for stack in stacks:
        if stack[0].key is None:  # alone: train.py's job function, as the basic launcher
            job = stack[0]
            returns[job.idx] = run_job(
                hydra_context=hydra_context,
                task_function=task_function,
                config=job.config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)
            continue
        if count and position(len(returns), len(stack)):
            print(position(len(returns), len(stack)), flush=True)  # a lone job prints its own
        returns.update(_launch_group(stack, len(stack), sweep_dir))
    return returns


def _train_places(schedule, launcher, config) -> dict:
    """Every place in a process of its own (joblib's loky workers, as launcher=parallel),
    all at once; the cores are split between them, and each stack claims a GPU slot of its
    own when it starts (zeroinit.run.claim_gpu), so the places spread over the GPUs."""
    from hydra.core.singleton import Singleton
    from joblib import Parallel, delayed

    env = {k: v for k, v in os.environ.items() if k.startswith("ZEROINIT_")}
    threads = max(1, (os.cpu_count() or 1) // len(schedule))
    print(
        f"stacked: {sum(len(s) for p in schedule for s in p)} runs on {len(schedule)} "
        f"places at once: "
        + ", ".join("/".join(str(len(s)) for s in stacks) for stacks in schedule),
        flush=True,
    )
    parts = []
    with forwarded_to(lambda: child_processes("LokyProcess")) as received:
        try:
            parts = Parallel(n_jobs=len(schedule), backend="loky")(
                delayed(_place_worker)(
                    stacks,
                    launcher.hydra_context,
                    launcher.task_function,
                    config,
                    Singleton.get_state(),
                    env,
                    threads,
                )
                for stacks in schedule
            )
        except Exception:  # noqa: BLE001 - a worker the signal ended outside its training
            if not received:
                raise
    codes = [code for _, code in parts if code]
    if codes or received:  # stopped by a signal: every place saved and said what it stopped
        sweep_dir = Path(str(config.hydra.sweep.dir))
        print(summary_so_far(sweep_dir) if started_here() else "", flush=True)
        raise SystemExit(codes[0] if codes else 128 + received[0])
    return {idx: ret for part, _ in parts for idx, ret in part.items()}


def _place_worker(
    stacks, hydra_context, task_function, config, singleton_state, env, threads
) -> dict:
    """A place's process: the sweep's environment (loky reuses workers, so it is set, not
    inherited), Hydra's global state, its share of the cores; then its stacks. Returns
    ({job index: JobReturn}, the exit code a stop signal ended it with, or None)."""
    from hydra.core.singleton import Singleton

    os.environ.update(env)
    setup_globals()
    Singleton.set_state(singleton_state)
    torch.set_num_threads(threads)
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    interrupt_on_ctrl_c()
    returns: dict = {}
    try:
        returns = train_place(stacks, hydra_context, task_function, config)
    except SystemExit as e:  # a stop signal: the place's stack recorded it and said so
        return returns, e.code or 1
    return returns, None


def _launch_group(group: list[Job], stack_size, sweep_dir) -> dict:
    if stopped(sweep_dir) is not None:  # a failure every run shares stopped the sweep
        for job in group:
            skip_if_stopped(sweep_dir, job.cfg.paths.output_dir)
        return {job.idx: job.job_return(None) for job in group}
    for job in group:
        try:  # another run's folder: its record stays as it is (train_group refuses it)
            check_identity(job.cfg.paths.output_dir, job.cfg)
        except UserError:
            continue
        Path(job.cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        job.save_hydra_files()
    returns = {}

    def report(i, end):
        job = group[i]
        out_dir = Path(job.cfg.paths.output_dir)
        finish(end, out_dir, sweep_dir, tail=out_dir.name)
        returns[job.idx] = job.job_return(((end.results or {}).get("final") or {}).get("test_acc"))

    try:
        train_group([(job.cfg, job.overrides) for job in group], stack_size, on_outcome=report)
    except STOPPED as stop:  # SIGTERM & co.: each member saved its last epoch; say so, leave
        for job in group:
            if job.idx not in returns:
                record(sweep_dir, job.cfg.paths.output_dir, "interrupted", error=str(stop))
        leave(
            stop,
            f"{len(group)} stacked runs in {sweep_dir}",
            then=summary_so_far(sweep_dir) if started_here() else None,
        )
    except Exception as e:  # noqa: BLE001 - train_group re-raises only sweep-wide failures
        if not is_sweep_wide(e):
            raise
        if is_disk_error(e) and started_here():  # nothing later could be written: stop here
            failed = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            stop_on_disk_error(
                sweep_dir,
                f"{len(group)} stacked runs in {sweep_dir}",
                e,
                {Path(job.cfg.paths.output_dir).name: failed for job in group},
            )
        stop_sweep(sweep_dir, e)
    return {job.idx: returns.get(job.idx) or job.job_return(None) for job in group}

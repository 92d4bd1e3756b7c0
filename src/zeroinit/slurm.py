"""launcher=slurm: hydra-submitit-launcher's SlurmLauncher, with what a new user hits fixed.

- The GPU request follows the trainer (`config.gpus_for`, conf/launcher/slurm.yaml):
  trainer=cpu asks for none, so a sweep runs on partitions and nodes without GPUs.
- A submission that sbatch rejects ends in one line, `error: ...` with sbatch's reason and the
  key to change, exit 2, instead of submitit's traceback (`rejection`).
- Job states come from squeue while SLURM holds the jobs, then from sacct where the cluster
  keeps accounting (small clusters often do not: there submitit alone warns three times per
  status poll and never notices a job that ended without a result) (`JobStates`). A job that
  SLURM will never start (it asks for more than the partition has) ends the sweep with one
  line, not a wait without end (`NEVER_STARTS`).
- A job that ends without a result (interrupted and not requeued, killed at its time limit,
  out of memory) is reported in the sweep summary, not raised as a traceback that hides the
  other runs (`SlurmLauncher._result`). A requeued job is waited for: it is still in the queue.
- Every job limits torch's threads to its CPUs and learns how often it may requeue itself
  (zeroinit/signals.py) (`job_setup`).
"""

import contextlib
import io
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import submitit
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.slurm.slurm import SlurmInfoWatcher

from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Base
from zeroinit.errors import UserError

# Hydra imports this module at every start (hydra_plugins/zeroinit_slurm.py), `--help`
# included: what it needs of the training side (zeroinit.signals, zeroinit.sweep, which import
# Lightning) is imported where a job is submitted or reported.

log = logging.getLogger(__name__)


def job_setup(params: dict) -> list[str]:
    """Lines of the sbatch script before srun, ahead of the user's own `setup` lines."""
    from zeroinit.signals import MAX_REQUEUE_ENV

    return [
        # torch would start one thread per core of the node, however many CPUs the job has.
        'if [ -n "$SLURM_CPUS_PER_TASK" ]; then export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK; fi',
        f"export {MAX_REQUEUE_ENV}={int(params.get('max_num_timeout') or 0)}",
    ]


# ---------------------------------------------------------------- a rejected submission
# sbatch's reason -> the keys that decide it. First match wins; the order matters.
_REASONS = [
    (
        "unable to contact",
        "nothing in the config: SLURM's controller does not answer; "
        "try again, or ask the cluster's admins",
    ),
    ("timed out", "nothing in the config: SLURM's controller does not answer in time; try again"),
    ("generic resource", "gpus"),
    ("invalid partition", "hydra.launcher.partition (`sinfo -s` lists the partitions)"),
    ("account", "hydra.launcher.account (`sacctmgr show assoc user=$USER` lists yours)"),
    ("qos", "hydra.launcher.qos"),
    ("feature specification", "hydra.launcher.constraint (`sinfo -o '%P %f'` lists the features)"),
    ("time limit", "hydra.launcher.timeout_min (`sinfo -o '%P %l'` lists the time limits)"),
    ("--time", "hydra.launcher.timeout_min (minutes)"),
    ("memory", "hydra.launcher.mem_gb (`sinfo -N -o '%N %P %m'` lists MB per node)"),
    (
        "node configuration",
        "hydra.launcher.cpus_per_task, mem_gb, gpus_per_task or "
        "constraint: no node of the partition has that much "
        "(`sinfo -N -o '%N %P %c %m %G'`)",
    ),
    (
        "unrecognized option",
        "hydra.launcher.additional_parameters (sbatch's long options without the --)",
    ),
    ("invalid option", "hydra.launcher.additional_parameters"),
]


def rejection(stderr: str, gpus=None, accelerator=None) -> str:
    """sbatch's complaint -> one line naming the key to change."""
    reasons = []
    for line in stderr.strip().splitlines():
        for prefix in ("sbatch:", "error:", "Batch job submission failed:"):
            line = line.strip().removeprefix(prefix)
        if line.strip() and not line.startswith("Try "):  # Try "sbatch --help" ...
            reasons.append(line.strip())
    reason = "; ".join(dict.fromkeys(reasons)) or "no reason given"
    low = reason.lower()
    key = "hydra.launcher.* (conf/launcher/slurm.yaml lists them)"
    for needle, keys in _REASONS:
        if needle in low:
            key = keys
            break
    if key == "gpus":
        key = (
            f"the trainer: the job asks for {gpus} GPU per task because "
            f"trainer.accelerator={accelerator}; on nodes without GPUs use trainer=cpu, "
            "else a partition with GPUs (hydra.launcher.partition) or "
            "hydra.launcher.gpus_per_task"
        )
    return f"error: SLURM rejected the sweep: {reason}; change {key}"


# Why a job pends -> why it will never start, and the key to change (squeue's %r).
NEVER_STARTS = {
    "PartitionConfig": "it asks for more than any node of the partition has; change "
    "hydra.launcher.cpus_per_task, mem_gb or gpus_per_task "
    "(`sinfo -N -o '%N %P %c %m %G'` lists the nodes)",
    "PartitionTimeLimit": "hydra.launcher.timeout_min exceeds the partition's time limit "
    "(`sinfo -o '%P %l'`)",
    "PartitionNodeLimit": "hydra.launcher.nodes exceeds the partition's node limit",
    "BadConstraints": "no node has what it asks for; change hydra.launcher.constraint, "
    "cpus_per_task, mem_gb or gpus_per_task",
    "InvalidAccount": "change hydra.launcher.account",
    "InvalidQOS": "change hydra.launcher.qos",
}


# ---------------------------------------------------------------- job states
def _run(command) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(command, 1, "", str(e))


class JobStates(SlurmInfoWatcher):
    """The states of the sweep's jobs, where submitit asks sacct alone: squeue for the jobs it
    still holds (with why a job pends), sacct for the ones that left it, where the cluster keeps
    accounting. Same interface and polling schedule as submitit's SlurmInfoWatcher (2, 4, 8 s
    ... after a submission, then at most every `delay_s`)."""

    GONE = "NOT_IN_QUEUE"  # ended; squeue forgets a job MinJobAge (300 s) after its end

    # submitit polls at most every 600 s; a finished job shows by its result file at once, but
    # one that ended without a result (interrupted, killed) only by its state: ask every 15 s.
    # One squeue call for the sweep's array job is light on slurmctld.
    def __init__(self, delay_s: int = 15):
        super().__init__(delay_s=delay_s)
        self.use_sacct = True

    def update(self):
        ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
        if not ids:
            return
        self._num_calls += 1
        info = self._squeue(ids)
        if info is None:
            return  # squeue failed: keep what we knew, ask again at the next poll
        gone = [job for job, row in info.items() if row["State"] == self.GONE]
        if gone and self.use_sacct:
            ended = self._sacct(sorted({job.split("_")[0] for job in gone}))
            info.update({job: ended[job] for job in gone if job in ended})
        self._info_dict.update(info)
        self._last_status_check = time.time()
        for job_id in self._registered - self._finished:
            if self.is_done(job_id, mode="cache"):
                self._finished.add(job_id)

    def _squeue(self, ids) -> dict | None:
        done = _run(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(ids)])
        if done.returncode != 0 and "invalid job id" not in done.stderr.lower():
            log.debug("squeue failed: %s", done.stderr.strip())
            return None
        rows = [ln.strip().split("|", 2) for ln in done.stdout.splitlines() if ln.count("|") >= 2]
        seen = {job: {"State": state, "Reason": reason} for job, state, reason in rows}
        mine = [job for job in self._registered if job.split("_")[0] in ids]
        return {job: seen.get(job, {"State": self.GONE}) for job in mine}

    def _sacct(self, ids) -> dict:
        done = _run(
            [
                "sacct",
                "-o",
                "JobID,State,NodeList",
                "--parsable2",
                *[a for i in ids for a in ("-j", i)],
            ]
        )
        if done.returncode == 0:
            return self.read_info(done.stdout)
        self.use_sacct = False  # once: submitit would warn three times per poll, forever
        why = (done.stderr.strip().splitlines() or ["no output"])[0]
        log.info(
            "sacct: %s: the final state of jobs is not known (squeue has forgotten "
            "them), only whether they left a result",
            why,
        )
        return {}

    def reason(self, job_id: str) -> str | None:
        """Why a pending job waits (squeue's reason code), once squeue has been asked."""
        return self._info_dict.get(job_id, {}).get("Reason")


# ---------------------------------------------------------------- the launcher
class SlurmLauncher(_Base):
    """hydra-submitit-launcher's SlurmLauncher (its job function `__call__` and `checkpoint`
    are reused unchanged); `launch` submits and collects the results as Hydra's does, with
    the differences listed at the top of this file."""

    def launch(self, job_overrides, initial_job_idx):
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir}")
        calls = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            calls.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    idx,
                    f"job_id_for_{idx}",
                    Singleton.get_state(),
                )
            )
        jobs = self._run_array(self, *zip(*calls))
        return [self._result(job, call[0], call[2], sweep_dir) for job, call in zip(jobs, calls)]

    def _run_array(self, fn, *arguments) -> list:
        """fn(*arguments[i]) as array task i; returns submitit's jobs once all are done."""
        executor = submitit.AutoExecutor(
            cluster="slurm",
            folder=self.params["submitit_folder"],
            slurm_max_num_timeout=self.params["max_num_timeout"],
        )
        executor.update_parameters(**self._executor_params())
        try:
            with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr
                jobs = executor.map_array(fn, *arguments)
        except FailedJobError as e:  # sbatch said no: nothing was submitted
            trainer = self.config.get("trainer") or {}
            _fail(rejection(str(e), self.params.get("gpus_per_task"), trainer.get("accelerator")))
        except FileNotFoundError:
            _fail(
                "error: launcher=slurm: sbatch is not installed here; submit from a SLURM "
                "login node, or use launcher=parallel, stacked or slurm_local on this machine"
            )
        states = JobStates()
        for job in jobs:
            job.watcher = states  # this instance only: submitit's class-wide watcher stays
            states.register_job(job.job_id)
        self._wait(jobs, states)
        return jobs

    def _wait(self, jobs, states: "JobStates", poll_s: float = 1.0):
        """Until every job is done. A job SLURM will never start (it asks for more than the
        partition has: sbatch accepts that where the cluster does not enforce partition
        limits at submission) ends the sweep with one line instead of a wait without end."""
        while not all(job.done() for job in jobs):
            stuck = {
                job.job_id: states.reason(job.job_id)
                for job in jobs
                if states.reason(job.job_id) in NEVER_STARTS
            }
            if stuck:
                _run(["scancel", *[job.job_id for job in jobs]])
                job_id, reason = next(iter(stuck.items()))
                _fail(
                    f"error: SLURM will never start job {job_id} ({reason}: "
                    f"{NEVER_STARTS[reason]}); cancelled the sweep's {len(jobs)} jobs"
                )
            time.sleep(poll_s)

    def _executor_params(self) -> dict:
        # As Hydra's plugin: shared keys as they are, SLURM's with a slurm_ prefix.
        params = dict(self.params)
        params["setup"] = [*job_setup(params), *(params.get("setup") or [])]
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        return {
            k if k in shared else f"slurm_{k}": v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout", "stack_size")
        }

    def _result(self, job, overrides, idx, sweep_dir) -> JobReturn:
        try:
            return job.results()[0]
        except (UncompletedJobError, FailedJobError) as e:
            state = job.watcher.get_state(job.job_id, mode="cache")
            log.warning(
                "SLURM job %s (#%d) ended without a result (%s); its log: %s",
                job.job_id,
                idx,
                state,
                job.paths.stdout,
            )
            if not _reported(sweep_dir, job.job_id):  # killed before it could say why
                from zeroinit.lifecycle import End, finish

                last = [ln for ln in str(e).splitlines() if ln.strip()][-1:]
                shown = [
                    o for o in overrides if not o.startswith(("paths.", "hydra.", "launcher="))
                ]
                label = f"#{idx} {' '.join(shown)}".replace("/", "_")  # a file name, too
                why = f"SLURM job {job.job_id} ended ({state}) without a result" + (
                    f": {last[0].strip()[:200]}" if last else ""
                )  # no exception reached this process: its text is all there is
                finish(End("failed", None, why), Path(sweep_dir) / label, sweep_dir)
            # Not FAILED: Hydra would raise it as a traceback; the sweep summary says it.
            return JobReturn(
                overrides=list(overrides), status=JobStatus.COMPLETED, _return_value=None
            )


def _fail(line: str):
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(2)


def _reported(sweep_dir, job_id: str) -> bool:
    """Whether the job recorded its own outcome (e.g. `interrupted`) before it ended."""
    from zeroinit.sweep import outcome_dir

    out = outcome_dir(sweep_dir)
    if out is None or not out.is_dir():
        return False
    for path in out.glob("*.json"):
        try:
            if json.loads(path.read_text()).get("slurm_job") == job_id:
                return True
        except (OSError, ValueError):
            continue
    return False


# ---------------------------------------------------------------- stacks as array tasks
class StackedSlurmLauncher(SlurmLauncher):
    """launcher=slurm_stacked: the sweep's stacks (zeroinit.stacked: the jobs that may share
    a stack, cut at `stack_size`) as one array task each, submitted and waited for as
    launcher=slurm's runs are. Each task composes its members' configs and trains them as
    launcher=stacked would (zeroinit.stacked.launch.train_place): the same folders, files
    and numbers as a run trained alone. A stop signal (preemption, the time-limit warning)
    stops the whole stack at a batch boundary with every member `interrupted`; a requeued
    task or a rerun of the command resumes every member from its own checkpoint.

    The login node cannot time the compute nodes' devices, so the stack size is a number
    (hydra.launcher.stack_size, 8 by default), never measured here."""

    def launch(self, job_overrides, initial_job_idx):
        from zeroinit.stacked.launch import compose_jobs, plan
        from zeroinit.stacked.size import check_setting

        size = self.params.get("stack_size")
        try:
            check_setting(size)
            if not isinstance(size, int):
                raise UserError(
                    f"hydra.launcher.stack_size: {size!r} is not allowed with "
                    "launcher=slurm_stacked; allowed: an integer >= 1 (the login "
                    "node cannot measure the compute nodes)"
                )
        except UserError as e:
            _fail(f"error: {e}")
        nums = list(range(initial_job_idx, initial_job_idx + len(job_overrides)))
        sweep_overrides = dict(zip(nums, map(list, job_overrides)))  # what a task composes
        jobs = compose_jobs(self.hydra_context.config_loader, self.config, job_overrides, nums)
        stacks = [s for place in plan(jobs, size, places=1) for s in place]
        calls = [
            ([sweep_overrides[job.idx] for job in stack], [job.idx for job in stack])
            for stack in stacks
        ]
        log.info(
            "%d runs in %d stacks: %s",
            len(jobs),
            len(stacks),
            "/".join(str(len(s)) for s in stacks),
        )
        print(
            f"stacked: {len(jobs)} runs -> {len(stacks)} SLURM array tasks: "
            + "/".join(str(len(s)) for s in stacks),
            flush=True,
        )
        returns = {}
        for (overrides, nums), ret in zip(calls, self._submit(calls)):
            returns.update(ret)
        return [returns[idx] for idx in range(initial_job_idx, initial_job_idx + len(jobs))]

    def _submit(self, calls) -> list[dict]:
        """One array task per call (a stack); [{job number: JobReturn}] per stack."""
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        state = Singleton.get_state()
        tasks = self._run_array(
            self.train_stack, [o for o, _ in calls], [n for _, n in calls], [state] * len(calls)
        )
        out = []
        for task, (overrides, nums) in zip(tasks, calls):
            try:
                out.append(task.results()[0])
                continue
            except (UncompletedJobError, FailedJobError):
                pass
            # ended without its stack's results: _result records it for the sweep summary
            self._result(task, [o for ov in overrides for o in ov], nums[0], sweep_dir)
            out.append(
                {
                    n: JobReturn(overrides=list(o), status=JobStatus.COMPLETED, _return_value=None)
                    for o, n in zip(overrides, nums)
                }
            )
        return out

    def train_stack(self, overrides: list, nums: list, singleton_state) -> dict:
        """In the array task: the stack's members composed as launcher=stacked composes them,
        then trained as one stack (a single job as the basic launcher would)."""
        from hydra.core.utils import setup_globals

        from zeroinit.stacked.launch import compose_jobs, group_key, train_place

        Singleton.set_state(singleton_state)
        setup_globals()
        jobs = compose_jobs(
            self.hydra_context.config_loader,
            self.config,
            overrides,
            nums,
            job_id=submitit.JobEnvironment().job_id,
        )
        if len(jobs) > 1:
            for job in jobs:
                job.key = group_key(job.cfg)
        return train_place([jobs], self.hydra_context, self.task_function, self.config)

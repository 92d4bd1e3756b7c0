"""Train the runs of one group (same data, model, optimizer, schedule) as stacked members.

`train_group(jobs, stack_size)` does for a group what `zeroinit.run.train_or_resume` does for
one run, through the same `zeroinit.lifecycle.claim`: finished runs are skipped, runs another
process holds are left alone ("busy"), interrupted runs resume from their checkpoint, and the
rest start from their seed. Runs
resuming from different epochs cannot share a loop, so they train in separate stacks;
`stack_size` caps the members of one stack (zeroinit.stacked.size: auto measures the fastest).
"""

import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from zeroinit import perturb, speed
from zeroinit.config import build
from zeroinit.errors import UserError
from zeroinit.lifecycle import End, claim, failed
from zeroinit.loggers import finalize
from zeroinit.progress import Progress
from zeroinit.results import FILENAME
from zeroinit.run import build_member, check_run, claim_gpu, run, start
from zeroinit.signals import StopOnSignal
from zeroinit.stacked.layers import stack_nets
from zeroinit.stacked.members import Member, StackedRuns, combine_checkpoints
from zeroinit.stacked.module import StackedClassifier, StackedDataModule
from zeroinit.stacked.size import resolve
from zeroinit.sweep import is_sweep_wide


@dataclass
class MemberJob:
    """One run of the group, as train_group trains it."""

    index: int  # its place in train_group's jobs (and outcomes)
    cfg: DictConfig  # resolved, with paths.output_dir
    overrides: list  # the command line's, as results.json records them
    checkpoint: Path | None = None  # where it resumes from (lifecycle.claim); None: its seed

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.paths.output_dir)


def train_group(
    jobs: list[tuple[DictConfig, list]], stack_size="auto", on_outcome=None
) -> list[End]:
    """jobs: [(resolved config with paths.output_dir, overrides)] of one group.
    Returns each job's End (outcome, results, error: the exception) in the jobs' order;
    `on_outcome(i, end)` is called as each job's end is known (the launcher: lifecycle.finish)."""
    outcomes: list = [None] * len(jobs)

    def done(job: MemberJob, end: End):
        outcomes[job.index] = end
        if on_outcome:
            on_outcome(job.index, end)

    todo, claims = {}, []  # optimizer steps done -> [MemberJob]
    for i, (cfg, overrides) in enumerate(jobs):
        job = MemberJob(i, cfg, list(overrides))
        try:
            check_run(cfg)
            claimed = claim(job.run_dir, cfg)
        except UserError as e:
            done(job, End("failed", None, e))
            continue
        if claimed.outcome is not None:  # skipped or busy
            done(job, End(claimed.outcome, claimed.results))
            continue
        claims.append(claimed)
        job.checkpoint, steps = claimed.checkpoint, 0
        if job.checkpoint is not None:
            ckpt = torch.load(job.checkpoint, map_location="cpu", weights_only=False)
            steps = ckpt["global_step"]
        todo.setdefault(steps, []).append(job)
    try:
        for _, members in sorted(todo.items()):  # runs at one step share a loop
            size = resolve(stack_size, members[0].cfg, len(members))
            for first in range(0, len(members), size):
                stack = members[first : first + size]
                if len(stack) == 1:  # a stack of one is slower than the plain network
                    _train_alone(stack[0], done)
                else:
                    _train_stack(stack, done)
    finally:
        for claimed in claims:
            claimed.release()
    return outcomes


def _train_alone(job: MemberJob, done) -> None:
    """The job as the basic launcher's job would train it (zeroinit.run.run), lock already
    held; its end goes where a stack's members' go."""
    try:
        results = run(job.cfg, job.overrides, ckpt_path=job.checkpoint)
    except Exception as e:  # noqa: BLE001 - as a stack's failure: recorded, the group goes on
        if is_sweep_wide(e):
            raise
        done(job, failed(job.run_dir, e))
        return
    done(job, End(results["status"], results))


def _train_stack(members: list[MemberJob], done) -> None:
    """One stacked fit of these members."""
    cfg0 = members[0].cfg
    gpu = claim_gpu(cfg0)
    group: list[Member] = []
    try:
        _announce([job.run_dir for job in members])
        trainer_cfg = cfg0.trainer
        if gpu is not None:
            trainer_cfg = OmegaConf.merge(trainer_cfg, {"devices": [gpu.index]})
        settings, data = start(cfg0, stacked=True)
        for k, job in enumerate(members):
            parts = build_member(
                job.cfg, data, job.overrides, job.checkpoint is not None, len(members)
            )
            group.append(Member(k, parts))
        stacked = perturb.of(cfg0).attach(stack_nets([m.net for m in group]))  # its hooks
        stacked = speed.prepare(stacked, settings)  # the members' nets: views of it
        optimizer = speed.optimizer(build(cfg0.optimizer), settings)
        module = StackedClassifier(stacked, len(members), optimizer, data.num_classes)
        dm = StackedDataModule(data, [int(job.cfg.seed) for job in members])
        runs = StackedRuns(group)
        trainer = build(
            trainer_cfg,
            logger=False,
            callbacks=[Progress(), runs, _EpochLine(group), StopOnSignal()],
            enable_checkpointing=False,
        )
        ckpt_path = _group_checkpoint(members)
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        finally:
            if ckpt_path:
                Path(ckpt_path).unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - the group failed: every member records it
        for m in group:
            if m.writer.results["status"] == "running":
                m.writer.write("failed", error=f"{type(e).__name__}: {e}")
        for k, job in enumerate(members):
            results = group[k].writer.results if k < len(group) else None
            if results is None or not (job.run_dir / FILENAME).exists():
                done(job, End("failed", None, e))
            else:  # a member that had ended (diverged) keeps its outcome
                status = results["status"]
                done(job, End(status, results, e if status == "failed" else None))
        if is_sweep_wide(e):  # every other stack would meet it too: the launcher stops
            raise
        return
    finally:
        for m in group:  # the group's trainer has no loggers: Lightning would not end theirs
            ended = m.writer.results["status"] in ("completed", "diverged")
            finalize(m.loggers, "success" if ended else "failed")
        if gpu is not None:
            gpu.release()
    for m, job in zip(group, members):
        done(job, End(m.writer.results["status"], m.writer.results))


def _announce(run_dirs: list[Path]) -> None:
    """One short line for the stack (a 40-run stack's names would fill a screen); its members,
    one line per stack, in stacks.txt beside their folders."""
    listed = run_dirs[0].parent / "stacks.txt"
    with open(listed, "a", encoding="utf-8") as f:
        f.write(f"{len(run_dirs)} runs in one fit: {', '.join(d.name for d in run_dirs)}\n")
    more = f" and {len(run_dirs) - 1} more (all: {listed})" if len(run_dirs) > 1 else ""
    print(f"stacked: {len(run_dirs)} runs in one fit: {run_dirs[0].name}{more}", flush=True)


def _group_checkpoint(members: list[MemberJob]) -> str | None:
    """The members' checkpoints combined into one file for Trainer.fit(ckpt_path=...)."""
    if all(job.checkpoint is None for job in members):
        return None
    checkpoints = [
        torch.load(job.checkpoint, map_location="cpu", weights_only=False) for job in members
    ]
    target = members[0].run_dir / "checkpoints" / ".stacked-resume.ckpt"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(combine_checkpoints(checkpoints), target)
    return str(target)


class _EpochLine(L.Callback):
    """One line per epoch for the whole stack (each member's results.json has its own)."""

    def __init__(self, members):
        self.members, self._start = members, None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        epoch = trainer.current_epoch + 1
        accs = sorted(
            e["test_acc"] if e["test_acc"] is not None else math.nan
            for e in (
                m.writer.results["epochs"][-1] for m in self.members if m.writer.results["epochs"]
            )
            if e["epoch"] == epoch
        )  # the members that trained this epoch
        if not accs:
            return
        seconds = time.perf_counter() - self._start
        diverged = sum(m.writer.results["status"] == "diverged" for m in self.members)
        print(
            f"epoch {trainer.current_epoch + 1:>3}/{trainer.max_epochs}  "
            f"{len(accs)} runs  test_acc min {accs[0]:.4f}  median "
            f"{accs[len(accs) // 2]:.4f}  max {accs[-1]:.4f}"
            + (f"  ({diverged} diverged)" if diverged else "")
            + f"  ({seconds:.2f}s)",
            flush=True,
        )

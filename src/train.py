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
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from zeroinit.config import register_resolvers

# torch, Lightning and the training code are imported in main(), not here: `--help`, `--cfg`
# and `--info` only compose the config and should answer in well under the ~4 s those take.

log = logging.getLogger("zeroinit")

register_resolvers()


def _limit_threads_for_parallel_jobs():
    # n joblib workers x all cores each would oversubscribe the CPU: share the cores.
    import torch

    launcher = HydraConfig.get().launcher
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n_jobs:
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // (cores if n_jobs < 0 else n_jobs)))


def _resume_hint(sweeping: bool, saved: bool, out_dir: Path) -> str:
    # A sweep's run directory is a function of its config, so the same command finds it; a
    # single run's is new every time (it starts with the date), so it is named.
    if sweeping:
        from zeroinit.signals import RESUME_HINT

        return RESUME_HINT
    if not saved:
        return "nothing was saved yet; rerun the command to start again"
    # Quoted for Hydra (a run directory's name holds '=' and ',') and then for the shell.
    args = [a for a in sys.argv if not a.startswith("hydra.run.dir=")]  # resumed already
    command = " ".join(shlex.quote(a) for a in ["python", *args, f'hydra.run.dir="{out_dir}"'])
    return f"to resume: {command}"


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from zeroinit.lifecycle import End, failed, finish, record, remove_unstarted
    from zeroinit.results import FILENAME
    from zeroinit.run import ddp_worker, train_or_resume
    from zeroinit.signals import STOPPED, interrupt_on_ctrl_c, leave
    from zeroinit.sweep import (
        is_disk_error,
        is_sweep_wide,
        position,
        skip_if_stopped,
        started_here,
        stop_on_disk_error,
        stop_sweep,
        summary_so_far,
    )

    hc = HydraConfig.get()
    out_dir, log_dir = Path(cfg.paths.output_dir), Path(cfg.paths.log_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    sweep_dir = hc.sweep.dir if sweeping else None
    _limit_threads_for_parallel_jobs()
    interrupt_on_ctrl_c()  # Ctrl-C outside training: exit 130 with one line, too
    if sweeping and skip_if_stopped(hc.sweep.dir, out_dir):  # a sweep-wide fault stopped it
        return None
    if sweeping and position(hc.job.num):
        print(position(hc.job.num), flush=True)
    try:
        outcome, results = train_or_resume(cfg, hc.overrides.task)
    except STOPPED as stop:  # SIGTERM, Ctrl-C & co.: saved; record, then leave (signals.py)
        saved = (out_dir / FILENAME).exists()
        if not saved:  # stopped before training: nothing to resume, nothing left behind
            remove_unstarted(out_dir, log_dir)
        if sweeping:
            record(hc.sweep.dir, out_dir, "interrupted", error=stop)
        leave(
            stop,
            out_dir,
            _resume_hint(sweeping, saved, out_dir),
            then=summary_so_far(hc.sweep.dir) if sweeping and started_here() else None,
        )
    except Exception as e:  # noqa: BLE001 - a sweep goes on past one failed run
        code = finish(failed(out_dir, e), out_dir, sweep_dir, log_dir)
        if is_disk_error(e):  # nothing later could be written: stop here, in one line
            if not sweeping:
                hint = _resume_hint(False, (out_dir / FILENAME).exists(), out_dir)
                print(
                    f"error: {e.strerror} writing {out_dir}; free space (or fix "
                    f"the folder), then: {hint}",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(2)
            if started_here():
                stop_on_disk_error(
                    hc.sweep.dir,
                    out_dir,
                    e,
                    {out_dir.name: {"status": "failed", "error": f"{type(e).__name__}: {e}"}},
                )
        if sweeping and is_sweep_wide(e):  # every run would meet it: stop, said once at the end
            stop_sweep(hc.sweep.dir, e)
            return None
        if sweeping:
            return None
        if code == 2:  # a user error: its one line is said
            sys.exit(2)
        raise
    if ddp_worker():  # rank 0 reports for the run
        if sweeping:
            record(hc.sweep.dir, out_dir, outcome, results)
        return None
    where = (
        ""
        if results is None
        else (
            f"({results['wall_time_s']:.1f}s on {results['device']})\n"
            f"logs: {out_dir}"
            + (
                f"  (tensorboard --logdir {cfg.paths.log_dir})"
                if "tensorboard" in (cfg.get("logger") or {})
                else ""
            )
        )
    )
    code = finish(End(outcome, results), out_dir, sweep_dir, tail=where)
    if results is None:  # busy
        return None
    if code and not sweeping:
        sys.exit(code)
    return (results.get("final") or {}).get("test_acc")


if __name__ == "__main__":
    from zeroinit.config import check_group_choices
    from zeroinit.errors import UserError

    try:  # before Hydra, whose message for a missing option is a dozen lines
        check_group_choices(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    main()

"""Search as well as grids: `hydra/sweeper=optuna_search` (conf/hparams_search/ presets), one
Optuna study per combination of the `studies` grid (e.g. one per init scheme), each asking
its `params` (e.g. optimizer.lr) for `n_trials` runs, launched by the configured launcher,
scored by what train.py returns (the run's final test accuracy).

Studies live in an SQLite file (`storage`, in the sweep's folder by default), so a killed
search resumes: rerun the command, and each study goes on to its n_trials, the trials the
kill left running asked again with the same values (their run folders resume from their
checkpoints, or are skipped if they had finished). Finished runs are never trained twice.

Why not hydra-optuna-sweeper: its last release pins optuna<3, whose SQLite storage does not
run with SQLAlchemy 2 (which MLflow and Alembic now require), so a resumable study cannot
be installed beside the rest of the project.
"""

import itertools
import json
import math
from pathlib import Path

from zeroinit.errors import UserError
from zeroinit.results import write_json_atomic

INTERRUPTED = "interrupted"  # a trial's user attr: its run was stopped by a kill, asked again


def distributions(params: dict) -> dict:
    """{key: spec} -> Optuna distributions. A spec: a list of choices, or {low, high} with
    optional log: true (floats) or int: true / step."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out = {}
    for key, spec in params.items():
        if isinstance(spec, (list, tuple)):
            out[key] = CategoricalDistribution(list(spec))
            continue
        if not isinstance(spec, dict) or "low" not in spec or "high" not in spec:
            raise UserError(
                f"hydra.sweeper.params.{key}: {spec!r} is not allowed; allowed: a list of "
                "choices or {low: .., high: .., log: true|false, int: true|false, step: ..}"
            )
        if spec.get("int"):
            out[key] = IntDistribution(
                int(spec["low"]),
                int(spec["high"]),
                log=bool(spec.get("log")),
                step=spec.get("step") or 1,
            )
        else:
            out[key] = FloatDistribution(
                float(spec["low"]),
                float(spec["high"]),
                log=bool(spec.get("log")),
                step=spec.get("step"),
            )
    return out


def study_grid(studies: dict) -> list[dict]:
    """{key: [values]} -> one {key: value} per study (the product), [{}] for none."""
    keys = list(studies or {})
    return [dict(zip(keys, values)) for values in itertools.product(*(studies[k] for k in keys))]


def override(key: str, value) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, str) and ',' in value else value}"


class Search:
    """The sweep: for each study, ask, launch a batch, tell, until n_trials are done."""

    def __init__(
        self,
        launcher,
        validate,
        *,
        params,
        studies,
        n_trials,
        n_jobs,
        direction,
        storage,
        study_name,
        sampler_seed,
        sweep_dir,
    ):
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UserError(
                    f"hydra.sweeper.{key}: {value!r} is not allowed; allowed: an integer >= 1"
                )
        if direction not in ("maximize", "minimize"):
            raise UserError(
                f"hydra.sweeper.direction: {direction!r} is not allowed; "
                "allowed: maximize, minimize"
            )
        self.launcher, self.validate = launcher, validate
        self.space = distributions(params or {})
        if not self.space:
            raise UserError("hydra.sweeper.params: empty; allowed: at least one key to search")
        self.grid = study_grid(studies)
        self.n_trials, self.n_jobs, self.direction = n_trials, n_jobs, direction
        self.storage, self.study_name, self.seed = storage, study_name, sampler_seed
        self.sweep_dir = Path(sweep_dir)
        self.job_idx = 0

    def run(self, fixed: list[str]) -> dict:
        """Every study to n_trials; returns {study name: best {value, params}}."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        best = {}
        for point in self.grid:
            name = "-".join([self.study_name, *(f"{k}={v}" for k, v in point.items())])
            study = optuna.create_study(
                study_name=name,
                storage=self.storage,
                direction=self.direction,
                load_if_exists=True,
            )
            # Seeded by how far the study got: a resumed study does not draw its first values
            # again (a fresh sampler with the same seed would, and repeat finished runs).
            seed = None if self.seed is None else int(self.seed) + len(study.trials)
            study.sampler = optuna.samplers.TPESampler(seed=seed)
            self._requeue_interrupted(study)
            self._run_study(study, [*fixed, *(override(k, v) for k, v in point.items())])
            done = [t for t in study.trials if t.state.name == "COMPLETE"]
            if done:
                best[name] = {"value": study.best_value, "params": study.best_params}
                print(f"search {name}: best {study.best_value:.4f} with {study.best_params}")
        write_json_atomic(self.sweep_dir / "search_best.json", best)  # never half-written
        return best

    def _requeue_interrupted(self, study) -> None:
        # A killed search leaves its last batch RUNNING: those values are asked again (their
        # run folders resume from the checkpoint, or are skipped if they had finished), and
        # the abandoned trials do not count.
        import optuna
        from optuna.trial import TrialState

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            optuna.trial.Trial(study, t._trial_id).set_user_attr(INTERRUPTED, True)
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=False)

    def _run_study(self, study, fixed: list[str]) -> None:
        from optuna.trial import TrialState

        while True:
            ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
            left = self.n_trials - sum(not t.user_attrs.get(INTERRUPTED) for t in ended)
            if left <= 0:
                return
            trials = [study.ask(self.space) for _ in range(min(self.n_jobs, left))]
            batch = [[*fixed, *(override(k, v) for k, v in t.params.items())] for t in trials]
            self.validate(batch)
            returns = self.launcher.launch(batch, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            for trial, ret in zip(trials, returns):
                value = _score(ret)
                if value is None:  # failed, diverged, busy: a failed trial, counted
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, value)


def _score(ret) -> float | None:
    """A job's objective: the task's return value (train.py: final test accuracy), None for
    a run that failed, diverged to nothing or was busy."""
    try:
        value = ret.return_value
    except Exception:  # noqa: BLE001 - the job raised: Hydra re-raises it on access
        return None
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def sweep_runs_total(n_trials: int, studies: dict) -> int:
    return n_trials * len(study_grid(studies))

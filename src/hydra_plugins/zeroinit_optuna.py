"""`hydra/sweeper=optuna_search`: Optuna's search over a sweep's runs (zeroinit.search),
chosen by the presets in conf/hparams_search/. Kept light: Hydra imports every plugin module
at start-up; optuna is imported when a search starts."""

import os
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper


@dataclass
class OptunaSearchConf:
    _target_: str = "hydra_plugins.zeroinit_optuna.OptunaSearch"
    # {config key: spec}: a list of choices, or {low, high, log: true|false, int: true|false}
    params: dict = field(default_factory=dict)
    # {config key: [values]}: one study per combination (e.g. the learning rate per init)
    studies: dict = field(default_factory=dict)
    n_trials: int = 20  # runs per study
    n_jobs: int = 1  # runs asked and launched at once (a batch for the launcher)
    direction: str = "maximize"  # of the task's return: train.py's final test accuracy
    # SQLite in the sweep's folder: a killed search, rerun, resumes its studies
    storage: Any = "sqlite:///${hydra.sweep.dir}/optuna.db"
    study_name: Any = "${sweep_name}"
    sampler_seed: Any = 0  # TPE's seed: the same command asks the same values


ConfigStore.instance().store(
    group="hydra/sweeper", name="optuna_search", node=OptunaSearchConf, provider="zeroinit"
)


class OptunaSearch(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        import sys

        from omegaconf import OmegaConf

        from zeroinit.errors import UserError
        from zeroinit.loggers import absolute_sqlite
        from zeroinit.search import Search, sweep_runs_total
        from zeroinit.sweep import SWEEP_RUNS_ENV

        settings = {
            k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            for k, v in self.settings.items()
        }
        sweep_dir = self.config.hydra.sweep.dir
        try:
            import importlib.util

            if importlib.util.find_spec("optuna") is None:
                raise UserError(
                    "hydra.sweeper: optuna is not installed; pip install -e '.[optuna]'"
                )
            if any("," in a.split("=", 1)[-1] for a in arguments):
                raise UserError(
                    "a search takes one value per key on the command line; sweep values in "
                    "hydra.sweeper.studies (a study each) or search them in hydra.sweeper.params"
                )
            search = Search(
                self.launcher,
                self.validate_batch_is_legal,
                sweep_dir=sweep_dir,
                **{**settings, "storage": absolute_sqlite(str(settings["storage"]))},
            )
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        os.environ[SWEEP_RUNS_ENV] = str(
            sweep_runs_total(settings["n_trials"], settings.get("studies") or {})
        )
        return search.run(list(arguments))

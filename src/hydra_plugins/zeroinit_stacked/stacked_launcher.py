"""`hydra/launcher=stacked` (chosen with `launcher=stacked`, conf/launcher/stacked.yaml).

Kept light: Hydra imports every plugin module at start-up, so torch and the training code
are imported only when a sweep is launched."""

from dataclasses import dataclass
from typing import Any, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher


@dataclass
class StackedLauncherConf:
    _target_: str = "hydra_plugins.zeroinit_stacked.stacked_launcher.StackedLauncher"
    # Members per stack: an integer >= 1, or auto (the fastest size the probe measured, up to
    # what fits in half the free memory of the device, at most 64: zeroinit.stacked.size).
    stack_size: Any = "auto"
    # Places that train stacks at once: an integer >= 1, or auto (one per GPU torch sees when
    # the runs use a GPU, else 1). On a CPU, N workers split the cores.
    workers: Any = "auto"


ConfigStore.instance().store(
    group="hydra/launcher", name="stacked", node=StackedLauncherConf, provider="zeroinit"
)


class ComposedOnce:
    """Hydra's config loader, remembering each job's composed config until the launcher takes
    it. Hydra's sweeper composes every job of a batch to check it (`validate_batch_is_legal`),
    throws the result away, and the launcher composes it again: right for a launcher whose
    jobs run elsewhere, pure waste for this one, which runs them in this process (~0.09 s a
    job on 2 cores: 1.3 s of the README's 15-run sweep). The sweeper's copy is never used by
    anything else, so handing it to the launcher changes nothing but the time."""

    def __init__(self, loader) -> None:
        self._loader, self._composed = loader, {}

    def load_sweep_config(self, master_config, sweep_overrides):  # the sweeper's check
        composed = self._loader.load_sweep_config(master_config, list(sweep_overrides))
        self._composed[(id(master_config), tuple(sweep_overrides))] = composed
        return composed

    def take(self, master_config, sweep_overrides):
        """The launcher's call: the sweeper's composition of this job, else a new one."""
        key = (id(master_config), tuple(sweep_overrides))
        if key in self._composed:
            return self._composed.pop(key)
        return self._loader.load_sweep_config(master_config, list(sweep_overrides))

    def __getattr__(self, name):
        if name in ("_loader", "_composed"):  # not set yet: being unpickled in a worker
            raise AttributeError(name)
        return getattr(self._loader, name)


class StackedLauncher(Launcher):
    def __init__(self, stack_size: Any = "auto", workers: Any = "auto") -> None:
        self.stack_size, self.workers = stack_size, workers
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        if not isinstance(hydra_context.config_loader, ComposedOnce):  # shared with the sweeper
            hydra_context.config_loader = ComposedOnce(hydra_context.config_loader)
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from zeroinit.stacked.launch import launch

        return launch(self, job_overrides, initial_job_idx)

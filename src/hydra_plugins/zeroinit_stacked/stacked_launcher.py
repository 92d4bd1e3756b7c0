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
    # Members per stack: an integer >= 1, or auto (as many as fit in half the free memory
    # of the device, at most 64).
    stack_size: Any = "auto"


ConfigStore.instance().store(group="hydra/launcher", name="stacked", node=StackedLauncherConf,
                             provider="zeroinit")


class StackedLauncher(Launcher):
    def __init__(self, stack_size: Any = "auto") -> None:
        self.stack_size = stack_size
        self.config = self.hydra_context = self.task_function = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        from zeroinit.stacked.launch import launch

        return launch(self, job_overrides, initial_job_idx)

"""launcher=slurm's launcher class, where Hydra looks for it: Hydra instantiates launchers only
from the `hydra_plugins` namespace package. The code is in src/zeroinit/slurm.py."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from zeroinit import slurm


class SlurmLauncher(slurm.SlurmLauncher):
    pass


# launcher=slurm_stacked (conf/launcher/slurm_stacked.yaml): launcher=slurm's keys + stack_size
@dataclass
class StackedSlurmQueueConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.zeroinit_slurm.StackedSlurmLauncher"
    stack_size: Any = 8


ConfigStore.instance().store(
    group="hydra/launcher",
    name="zeroinit_slurm_stacked",
    node=StackedSlurmQueueConf,
    provider="zeroinit",
)


class StackedSlurmLauncher(slurm.StackedSlurmLauncher):
    pass

"""launcher=slurm's launcher class, where Hydra looks for it: Hydra instantiates launchers only
from the `hydra_plugins` namespace package. The code is in src/zeroinit/slurm.py."""
from zeroinit import slurm


class SlurmLauncher(slurm.SlurmLauncher):
    pass

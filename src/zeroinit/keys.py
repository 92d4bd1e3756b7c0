"""What each config key is, declared once. Every list of config keys the code keeps is derived
from KEYS; the one Hydra reads itself (conf/hydra/default.yaml's `exclude_keys`, which keeps
keys out of a run's folder name) is checked against it by tests/test_keys.py.

A key is a config group (`trainer`: the choice `trainer=cpu`), a node or a value. Roles:
  NAME     names the run, dataset-model-init-x<bias scale>-s<seed> (zeroinit.config.run_name);
           TensorBoard shows these HPARAMS columns first
  ALIAS    a choice whose effect other keys show (bias_scale=up is init.bias_scale=100; an
           experiment preset; trainer=cpu is trainer.accelerator=cpu): not in the folder name
  SETTING  how or where a run runs, never what it computes: not in the folder name, and runs
           that differ only in it are one configuration in the report (a prefix: `hydra`
           covers hydra.*)
  RECORD   what a run records beside its numbers (extra callbacks): one configuration in the
           report, but in the folder name (runs that record differently need two folders)
  MEMBER   may differ between the members of one stack (zeroinit.stacked)
  NO_DATA  cannot change which files a run reads: a sweep over it is checked on one composed
           config, not one per value (zeroinit.preflight)
A new config group is one line here.
"""

NAME, ALIAS, SETTING, RECORD, MEMBER, NO_DATA = (
    "name",
    "alias",
    "setting",
    "record",
    "member",
    "no_data",
)

KEYS: dict[str, set[str]] = {
    "seed": {NAME, MEMBER, NO_DATA},
    "dataset": {NAME},
    "model": {NAME, NO_DATA},
    "init": {NAME, MEMBER, NO_DATA},
    "init.bias_scale": {NAME},
    "bias_scale": {ALIAS, NO_DATA},
    "perturb": {NO_DATA},
    "experiment": {ALIAS},
    "hparams_search": {ALIAS, NO_DATA},
    "trainer": {ALIAS, NO_DATA},
    "optimizer": {NO_DATA},
    "speed": {NO_DATA},
    "batch_size": {NO_DATA},
    "callbacks": {RECORD, NO_DATA},
    "logger": {SETTING, NO_DATA},
    "launcher": {SETTING, NO_DATA},
    "hydra/launcher": {SETTING, NO_DATA},
    "hydra": {SETTING},
    "sweep_name": {SETTING, NO_DATA},
    "runs_per_gpu": {SETTING, NO_DATA},
    "checkpoint_every_min": {SETTING, NO_DATA},
    "report": {SETTING, NO_DATA},
    "paths.log_dir": {SETTING},
    "paths.data_dir": {SETTING},
    "paths.output_dir": {SETTING, MEMBER},
    "dataset.data_dir": {SETTING},
    "dataset.download": {SETTING},
    "dataset.eval_batch_size": {SETTING},
    "trainer.accelerator": {SETTING},
    "trainer.devices": {SETTING},
    "trainer.enable_progress_bar": {SETTING},
    "trainer.enable_model_summary": {SETTING},
    "trainer.log_every_n_steps": {SETTING},
}


def having(*roles: str) -> tuple[str, ...]:
    """The keys with any of `roles`, in KEYS' order."""
    return tuple(k for k, r in KEYS.items() if r & set(roles))


NAME_KEYS = having(NAME)  # HPARAMS' first columns
UNNAMED_KEYS = having(NAME, ALIAS, SETTING)  # conf/hydra/default.yaml: exclude_keys
MEMBER_KEYS = having(MEMBER)  # may differ inside a stack
NOT_DATA = {k.split(".")[0] for k in having(NO_DATA)}  # swept: no config composed per value
REPORT_IGNORES = ("seed", *having(SETTING, RECORD))  # runs differing only here: averaged


def ignored_by_report(key: str) -> bool:
    """Whether the report averages over runs that differ in `key` (a dotted config key)."""
    return any(key == k or key.startswith(k + ".") for k in REPORT_IGNORES)


# What a run computes does not depend on these: where it writes, what it logs or watches,
# how its progress is shown, which device slot it gets. Every other setting is its identity.
NOT_IDENTITY = (
    "paths.",
    "logger.",
    "callbacks.",
    "report.",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "trainer.accelerator",
    "trainer.devices",
    "checkpoint_every_min",
    "runs_per_gpu",
    "sweep_name",
)

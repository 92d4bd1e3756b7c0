"""zeroinit.keys: every key's role declared once; the lists the code uses are derived from it,
and the one Hydra reads (exclude_keys) agrees with it."""

from pathlib import Path

from omegaconf import OmegaConf

from zeroinit import keys

ROOT = Path(__file__).resolve().parent.parent


def test_hydras_exclude_keys_are_the_declared_ones():
    hydra = OmegaConf.load(ROOT / "conf" / "hydra" / "default.yaml")
    declared = hydra.job.config.override_dirname.exclude_keys
    assert sorted(declared) == sorted(keys.UNNAMED_KEYS)


def test_every_config_group_has_a_declared_role():
    groups = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra")
    missing = [g for g in groups if g not in keys.KEYS and g != "paths"]
    assert not missing, f"declare these groups in src/zeroinit/keys.py: {missing}"


def test_the_derived_lists():
    assert keys.NAME_KEYS == ("seed", "dataset", "model", "init", "init.bias_scale")
    assert set(keys.MEMBER_KEYS) == {"seed", "init", "paths.output_dir"}
    assert {"seed", "model", "optimizer", "trainer", "callbacks"} <= keys.NOT_DATA
    assert "dataset" not in keys.NOT_DATA and "experiment" not in keys.NOT_DATA
    assert keys.ignored_by_report("paths.log_dir") and keys.ignored_by_report("seed")
    assert keys.ignored_by_report("callbacks.diagnostics.steps")  # recorded, not computed
    assert not keys.ignored_by_report("trainer.max_epochs")
    assert not keys.ignored_by_report("init.bias_scale")

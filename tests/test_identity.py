"""A run's folder is its identity: a rerun whose settings differ from the run recorded there
(another data folder, say) is refused in one line naming the key, never skipped or resumed
as if it were the same run, and the record stays as it was."""

import pytest

from fakedata import write_image_folder
from zeroinit.lifecycle import identity_mismatch


@pytest.mark.parametrize("launcher", ["stacked", "basic"])
def test_a_sweep_rerun_on_another_data_folder_is_refused_not_skipped(tmp_path, here, launcher):
    for name, seed in (("a", 0), ("b", 1)):
        write_image_folder(tmp_path / name, classes=("x", "y"), per_class=(4, 2), seed=seed)
    args = [
        "model=logreg",
        f"launcher={launcher}",
        "dataset=image_folder",
        "seed=0,1",
        "trainer.max_epochs=1",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path / 'out'}",
    ]
    first = here("train.py", "-m", *args, f"dataset.data_dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-2000:]
    runs = sorted((tmp_path / "out" / "sweeps").rglob("results.json"))
    assert len(runs) == 2
    before = {p: p.read_bytes() for p in runs}
    hydra_before = {p: (p.parent / ".hydra" / "config.yaml").read_text() for p in runs}

    again = here("train.py", "-m", *args, f"dataset.data_dir={tmp_path / 'b'}")
    assert again.returncode != 0
    errors = [ln for ln in again.stderr.splitlines() if ln.startswith("error:")]
    assert errors and all("dataset.data_dir" in ln for ln in errors), again.stderr[-2000:]
    assert "skipped" not in again.stdout
    for p in runs:  # nothing lost, nothing rewritten: the record still tells the truth
        assert p.read_bytes() == before[p]
        hydra_config = (p.parent / ".hydra" / "config.yaml").read_text()
        if launcher == "stacked":  # never rewritten
            assert hydra_config == hydra_before[p]
        else:  # Hydra's basic launcher rewrites it before the job: put back, resolved
            assert str(tmp_path / "a") in hydra_config and str(tmp_path / "b") not in hydra_config


def test_settings_that_do_not_change_the_experiment_are_not_its_identity():
    old = {"seed": 0, "dataset": {"data_dir": "/a"}, "paths": {"output_dir": "/x"}}
    assert identity_mismatch(old, {**old, "paths": {"output_dir": "/y"}}) is None
    assert identity_mismatch(old, {**old, "logger": {"csv": {}}}) is None  # a new key: added
    assert identity_mismatch(old, {**old, "callbacks": {"diagnostics": None}}) is None
    moved = identity_mismatch(old, {**old, "dataset": {"data_dir": "/b"}})
    assert moved is not None and "dataset.data_dir" in moved and "/a" in moved and "/b" in moved


def test_an_unfinished_run_may_be_resumed_longer_a_finished_one_is_not_rerun_shorter(tmp_path):
    from zeroinit.errors import UserError
    from zeroinit.lifecycle import check_identity
    from zeroinit.results import write_json_atomic

    config = {"seed": 0, "trainer": {"max_epochs": 1}}
    longer = {"seed": 0, "trainer": {"max_epochs": 3}}
    for status, refused in (("interrupted", False), ("completed", True)):
        write_json_atomic(tmp_path / "results.json", {"status": status, "config": config})
        try:
            check_identity(tmp_path, longer)
            assert not refused, status
        except UserError as e:
            assert refused and "trainer.max_epochs" in str(e), status

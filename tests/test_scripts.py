"""The console entry points (zeroinit.scripts) run the very scripts `python src/<script>.py`
runs: same Hydra config search, same outputs, sweeps included."""

import subprocess
import sys
from pathlib import Path

import pytest

from zeroinit.results import read_results

BIN = Path(sys.executable).parent


@pytest.mark.skipif(
    not (BIN / "zeroinit-train").exists(),
    reason="the project is not pip-installed in this environment",
)
def test_zeroinit_train_sweep_and_report(tmp_path):
    subprocess.run(
        [
            BIN / "zeroinit-train",
            "-m",
            "seed=0",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            f"paths.log_dir={tmp_path}",
            "sweep_name=entry",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )  # from any folder
    runs = sorted((tmp_path / "sweeps" / "entry").glob("*/results.json"))
    assert [read_results(p.parent)["config"]["seed"] for p in runs] == [0]
    assert all(read_results(p.parent)["status"] == "completed" for p in runs)
    out = subprocess.run(
        [BIN / "zeroinit-report", str(tmp_path / "sweeps"), "-o", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (tmp_path / "rep" / "report.md").exists(), out.stdout

"""Shared fixtures: compose the real configs from conf/, as train.py does."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # the scripts (train.py, report.py, ...) live in src/

from zeroinit.run import compose  # noqa: E402
os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")


@pytest.fixture
def make_cfg(tmp_path):
    """make_cfg(*overrides) -> the composed config, writing into tmp_path, on the CPU."""
    def make(*overrides):
        return compose("trainer=cpu", f"paths.output_dir={tmp_path}",
                       f"paths.log_dir={tmp_path}", *overrides)
    return make


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM cluster on this machine (tests/slurm_cluster.py), shared by the
    session's tests; skipped, with the reason, where none can be started (not root, no apt)."""
    from slurm_cluster import SlurmCluster, Unavailable

    try:
        cluster = SlurmCluster.start()
    except Unavailable as e:
        pytest.skip(f"no SLURM cluster: {e}")
    try:
        yield cluster
    finally:
        cluster.stop()

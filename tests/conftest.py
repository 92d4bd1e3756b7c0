"""Shared fixtures: compose the real configs from conf/, as train.py does."""

import os
import subprocess
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
        return compose(
            "trainer=cpu", f"paths.output_dir={tmp_path}", f"paths.log_dir={tmp_path}", *overrides
        )

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


@pytest.fixture
def here(monkeypatch, capfd):
    """here(script, *args) -> CompletedProcess of `python src/<script> ARGS` run in this process:
    the file runs as __main__, exactly as the zeroinit-* commands run it, minus the ~15 s of
    imports a subprocess pays on 2 cores. For tests about what a script does; the tests about
    the process itself (signals, kills, the exit code a shell sees) start real subprocesses.
    What a script may change for its own process is put back after: Hydra's global state, the
    logging handlers it installs, the Ctrl-C handler train.py installs and the environment
    (a sweep's preflight tells its runs not to download through it)."""
    import logging
    import signal

    from hydra.core.global_hydra import GlobalHydra

    from zeroinit import scripts

    def run(script, *args):
        root = logging.getLogger()
        handlers, level, sigint = root.handlers[:], root.level, signal.getsignal(signal.SIGINT)
        environ = dict(os.environ)
        monkeypatch.setattr(sys, "argv", [script, *args])
        capfd.readouterr()  # only this script's output
        GlobalHydra.instance().clear()
        code = 0
        try:
            scripts._run(script)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            GlobalHydra.instance().clear()
            signal.signal(signal.SIGINT, sigint)
            os.environ.clear()
            os.environ.update(environ)
            for h in set(root.handlers) - set(handlers):
                h.close()
            root.handlers[:], root.level = handlers, level
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess([script, *args], code, out, err)

    return run

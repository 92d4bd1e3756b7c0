"""Console entry points (pyproject.toml [project.scripts]): `zeroinit-train`, `zeroinit-report`,
`zeroinit-init-report` and `zeroinit-prepare-data` run src/train.py, src/report.py, ... exactly
as `python src/<script>.py` does (same file, same arguments, Hydra's config search relative to
it), so the two ways of calling a script can never drift apart.

The scripts and conf/ stay in the source tree, where the paper's users type `python
src/train.py ...`; the project is therefore installed editable (`pip install -e .`, what
`make setup` and environment.yml do), and these entry points find the tree through it.
"""

import runpy
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent


def _run(script: str):
    path = SRC / script
    if not path.exists():
        sys.exit(
            f"error: {path} not found: the zeroinit-* commands need the project's source "
            "tree, installed with `pip install -e .` (make setup)"
        )
    sys.argv[0] = str(path)
    runpy.run_path(str(path), run_name="__main__")


def train():
    _run("train.py")


def report():
    _run("report.py")


def init_report():
    _run("init_report.py")


def prepare_data():
    _run("prepare_data.py")

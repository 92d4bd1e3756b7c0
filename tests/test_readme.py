"""The README as a user reads it: its Python example runs as shown, and every command line of
its bash blocks is one these tests check."""

import re
import shlex
from pathlib import Path

import matplotlib
import pytest

from test_cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(marker: str) -> str:
    text = README.read_text()
    match = re.search(re.escape(marker) + r".*?\n```python\n(.*?)```", text, re.S)
    assert match, f"no python block after {marker!r} in README.md"
    return match.group(1)


def test_the_notebook_example_trains_loads_and_plots(tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # its runs go to ./outputs, as in a notebook started here
    scope: dict = {}
    exec(readme_block("<!-- tested: tests/test_readme.py"), scope)
    runs = scope["runs"]
    assert sorted(runs["init.name"].unique()) == ["bias_normal", "zero"]
    assert sorted(runs["epoch"]) == [1, 1, 2, 2] and set(runs["status"]) == {"completed"}
    assert all(Path(f).parent == tmp_path / "outputs" / "runs" for f in scope["folders"])
    assert len(matplotlib.pyplot.gca().get_lines()) == 2  # one curve per init


# ------------------------------------------------------------------ every command of the README
# Each command line in the README's bash blocks is checked here (what it names exists, composes
# and validates; the folders it opens are ones the README's commands make), and the quick start's
# printed epochs are compared with a real run: the README cannot drift from the code unseen.
ROOT = README.parent
CHECKED = (
    "make ",
    "python src/train.py",
    "python src/init_report.py",
    "python src/report.py ",
    "tensorboard --logdir ",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui ",
)


def readme_commands() -> list[str]:
    """Every command of the README's ```bash blocks, comments cut, continuations joined."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line:
                out.append(line)
    return out


def overrides(command: str) -> tuple[bool, list[str]]:
    """(-m or not, the overrides), a swept key's first value standing for its list."""
    words = shlex.split(command)[2:]
    multirun = "-m" in words
    first = []
    for word in (w for w in words if w != "-m"):
        key, _, value = word.partition("=")
        depth, cut = 0, len(value)
        for i, ch in enumerate(value):  # a comma outside brackets separates swept values
            depth += ch in "[({" and 1 or 0
            depth -= ch in "])}" and 1 or 0
            if ch == "," and depth == 0 and multirun:
                cut = i
                break
        first.append(f"{key}={value[:cut]}" if _ else word)
    return multirun, first


def sweep_folders() -> set[str]:
    """The sweep folders the README's -m commands make (relative to the repository)."""
    from zeroinit.run import compose

    found = set()
    for command in readme_commands():
        if command.startswith("python src/train.py"):
            multirun, args = overrides(command)
            if multirun:
                cfg = compose(*args, return_hydra_config=True)
                found.add(str(Path(cfg.paths.log_dir) / "sweeps" / cfg.sweep_name))
    return found


def test_every_readme_command_is_one_these_tests_check():
    commands = readme_commands()
    assert len(commands) >= 15
    assert [c for c in commands if not c.startswith(CHECKED)] == []


def test_the_readmes_make_targets_exist():
    targets = set(re.findall(r"^([a-zA-Z_-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = [c.split()[1] for c in readme_commands() if c.startswith("make ")]
    assert named and [t for t in named if t not in targets] == []


@pytest.mark.parametrize(
    "command",
    [c for c in readme_commands() if c.startswith(("python src/train.py", "python src/init_"))],
)
def test_each_readme_training_command_composes_and_validates(command):
    from zeroinit.config import build, validate
    from zeroinit.run import compose

    _, args = overrides(command)
    cfg = compose(*args)
    validate(cfg)
    build(cfg.init)  # the init scheme checks its values when built


def test_the_folders_the_readme_opens_are_ones_its_commands_make():
    sweeps = sweep_folders()
    assert {"outputs/sweeps/default", "outputs/sweeps/fig05_mnist_cnn"} <= sweeps
    assert "outputs/sweeps/mlflow_demo" in sweeps  # the MLflow example's own: nothing skipped
    for command in readme_commands():
        if command.startswith(("python src/report.py ", "tensorboard --logdir ")):
            folder = command.split()[-1]
            assert any(folder == s or folder.startswith(s + "/") for s in sweeps), command


def test_the_readmes_mlflow_ui_reads_the_store_the_mlflow_logger_writes():
    from zeroinit.run import compose

    (command,) = [c for c in readme_commands() if "mlflow ui " in c]
    uri = compose("logger=mlflow").logger.mlflow.tracking_uri
    assert f"--backend-store-uri {uri}" in command and "--workers 1" in command


def test_the_quick_starts_epochs_are_what_python_src_train_py_prints(tmp_path):
    """The README's output of the main job, epoch by epoch (times aside), against a real run
    on a CPU, where the README's numbers were made (a GPU's rounding gives others)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the README shows the CPU's numbers; this machine would train on its GPU")
    epoch = re.compile(r"^epoch +(\d+)/10  train_loss (\S+)  test_loss (\S+)  test_acc (\S+)", re.M)
    shown = epoch.findall(README.read_text())
    assert len(shown) == 10
    proc = cli("train.py", f"paths.log_dir={tmp_path}")  # as a user's shell runs it
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = epoch.findall(proc.stdout)
    assert got == shown


def test_the_readmes_config_table_names_every_option_of_every_group():
    """`--help` lists conf/'s options; the README's table must name the same (the paper's
    figure presets as the range fig03 ... fig12 its row spells out)."""
    text = README.read_text()
    missing = []
    for group in sorted(p for p in (ROOT / "conf").iterdir() if p.is_dir()):
        if group.name in ("hydra", "paths"):  # Hydra's settings and the folders: no options
            continue
        row = re.search(rf"^\| `{group.name}` \|(.*)$", text, re.M)
        assert row, f"README's config table has no row for {group.name}"
        for option in sorted(p.stem for p in group.glob("*.yaml")):
            figure = group.name == "experiment" and re.match(r"fig\d\d_", option)
            if f"`{option}`" not in row.group(1) and not figure:
                missing.append(f"{group.name}={option}")
    assert missing == []

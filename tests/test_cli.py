"""The command line, as a user runs it: `python src/train.py ...` and
`python src/init_report.py ...`, in a subprocess from the repository root (`cli`) or, where
only the script's own output matters, run as __main__ in this process (`here`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fakedata import write_image_folder

ROOT = Path(__file__).resolve().parent.parent


REFUSALS = ROOT / "docs" / "refusals.md"


def refusal_rows() -> dict[str, str]:
    """docs/refusals.md's table: {the input as shown: the line a user sees}."""
    rows = {}
    for line in REFUSALS.read_text().split("\n## Elsewhere")[0].splitlines():
        if line.startswith("| `") and line.endswith("` |"):
            shown, said = line[3:-3].split("` | `", 1)
            rows[shown.replace("\\|", "|")] = said.replace("\\|", "|")
    return rows


def check_documented(args: list[str], line: str, tmp_path, sweep: bool = False) -> None:
    """The refusal's line is the one docs/refusals.md shows for these arguments (temporary
    paths as <tmp>). With ZEROINIT_RECORD_REFUSALS=<file>, the line is appended there
    instead (to write the table after a message changed)."""
    shown = ("-m seed=0,1 " if sweep else "") + " ".join(args).format(
        empty="<tmp>/empty", images="<tmp>/images"
    )
    line = line.replace(str(tmp_path), "<tmp>")
    record = os.environ.get("ZEROINIT_RECORD_REFUSALS")
    if record:
        with open(record, "a") as f:
            f.write(json.dumps([shown, line]) + "\n")
        return
    assert refusal_rows().get(shown) == line, f"docs/refusals.md: {shown}"


def cli(script, *args, timeout=300):
    # as a user's shell has it: no warning filters from conftest, no Hydra full traces
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [sys.executable, f"src/{script}", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_multirun_sweep_writes_one_readable_dir_per_run(tmp_path):
    proc = cli(
        "train.py",
        "-m",
        "init=zero,bias_normal",
        "seed=0,1",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "trainer=cpu",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweeps" / "default"
    dirs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "results.json").exists())
    assert len(dirs) == 4, [p.name for p in sweep.iterdir()]
    names = [p.name for p in dirs]
    assert len(set(names)) == 4
    for init in ("zero", "bias_normal"):
        for seed in (0, 1):
            # readable: dataset, model, init, bias scale and seed in the name
            assert [
                n
                for n in names
                if n.startswith(f"mnist5k-mnist_fnn-{init}-x1") and n.endswith(f"-s{seed}")
            ], names
    for d in dirs:
        results = json.loads((d / "results.json").read_text())
        assert results["status"] == "completed"
        assert len(results["epochs"]) == 1
        assert results["config"]["seed"] == int(d.name[-1])
        assert d.name.startswith(f"mnist5k-mnist_fnn-{results['config']['init']['name']}-")
        assert list(d.glob("events.out.tfevents.*"))
        assert (d / "checkpoints" / "last.ckpt").exists()
    # the sweep's last lines: where it is and what to run next
    tail = proc.stdout.strip().splitlines()[-4:]
    assert tail == [
        f"  folder:  {sweep}",
        f"  report:  python src/report.py {sweep}",
        f"  curves:  tensorboard --logdir {sweep}",
        f"  bands:   tensorboard --logdir {sweep}/report/tensorboard  (after the report)",
    ], proc.stdout[-1000:]
    again = cli("train.py", *proc.args[2:])  # the same command: nothing to do, and it says so
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"  nothing trained: all 4 runs had finished before in {sweep}" in again.stdout


BAD_INPUTS = [
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["batch_size=0"], "batch_size"),
    (["init.bias_scale=nan"], "init.bias_scale"),
    (["init.bias_scale=-1"], "init.bias_scale"),
    (["model.activation=swish"], "model.activation"),
    (["dataset=mnist", "dataset.download=false", "paths.data_dir={empty}"], "dataset=mnist"),
    (["seed=-1"], "seed"),
    (["seed=99999999999999999999"], "seed"),
    (["optimizer.lr=-1"], "optimizer.lr"),
    (["optimizer.lr=nan"], "optimizer.lr"),
    (["dataset=image_folder"], "dataset.data_dir"),
    (["dataset=image_folder", "dataset.data_dir={images}"], "dataset.data_dir"),
    (["trainer=gpu"], "trainer.accelerator"),
    (["+trainer.gradient_clip_val=1.0"], "trainer.gradient_clip_val"),
    (["+trainer.accumulate_grad_batches=4"], "trainer.accumulate_grad_batches"),
    (["logger=mlflow", "logger.mlflow.tracking_uri=http://127.0.0.1:9"], "logger.mlflow"),
    (["logger=mlflow", "logger.mlflow.tracking_uri=file:///tmp/mlruns"], "logger.mlflow"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.devices=abc"], "trainer.devices"),
    (["trainer.devices=[0]"], "trainer.devices"),  # a device index on the CPU
    (["~model"], "model"),
    (["~optimizer"], "optimizer"),
    (["perturb.bn_offset=-1"], "perturb.bn_offset"),
    (["perturb.exact_bn=yes"], "perturb.exact_bn"),
    (["perturb.exact_bn=true"], "perturb"),  # mnist_fnn has no BatchNorm
    (["model=mnist_cnn", "model.padding_mode=mirror"], "model.padding_mode"),
    (["+trainer.limit_train_batches=0"], "trainer.limit_train_batches"),
    (["+trainer.limit_train_batches=-1"], "trainer.limit_train_batches"),
    (["model=cifar_cnn", "model.batchnorm=maybe"], "model.batchnorm"),
    (["model=foo"], "model"),  # a group's option: checked before Hydra's dozen lines
    (["logger=[tensorboard,nope]"], "logger"),
    (["bias_scale=2.5"], "bias_scale"),
]


@pytest.mark.parametrize("args,key", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_one_error_line_exit_2_nothing_left(tmp_path, here, args, key):
    if key == "trainer.accelerator" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    empty = tmp_path / "empty"
    empty.mkdir()
    images = tmp_path / "images"
    if "{images}" in " ".join(args):  # one truncated PNG among the good ones
        write_image_folder(images, size=(8, 8))
        bad = sorted((images / "train" / "dog").iterdir())[1]
        bad.write_bytes(bad.read_bytes()[:40])
    logs = tmp_path / "logs"
    proc = here(
        "train.py",
        *[a.format(empty=empty, images=images) for a in args],
        "trainer=cpu" if key != "trainer.accelerator" else "callbacks=default",
        f"paths.log_dir={logs}",
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert key in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not logs.exists(), list(logs.rglob("*"))  # no run directory, not even runs/
    check_documented(args, lines[0], tmp_path)
    if "{images}" in " ".join(args):
        assert str(bad) in lines[0]  # the one file among thousands, named
    if key == "seed":
        assert "from 0 to 4294967295" in lines[0]
    if key == "dataset=mnist":
        assert str(empty / "MNIST" / "raw") in lines[0]
        assert "dataset=mnist5k" in lines[0]
    if key == "model.activation":
        assert "elu" in lines[0] and "relu" in lines[0]  # the allowed values
    if key.startswith("init.bias_scale"):
        assert "bias_scale=down|none|up" in lines[0]


def test_init_report_resnet50_zero_shows_every_layer(here):
    proc = here("init_report.py", "model=resnet50", "dataset=cifar10", "init=zero")
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 8 and parts[1] in ("Conv2d", "Linear", "BatchNorm2d"):
            rows[parts[0]] = parts
    assert len(rows) == 54 + 37  # every conv/linear and BatchNorm, one row each
    shortcuts = [name for name in rows if name.endswith("shortcut.0")]
    assert shortcuts == [
        "layers.0.shortcut.0",
        "layers.3.shortcut.0",
        "layers.7.shortcut.0",
        "layers.13.shortcut.0",
    ]
    for name, (_, kind, shape, w_mean, w_std, zeros, b_mean, b_std) in rows.items():
        if kind in ("Conv2d", "Linear"):
            assert zeros == "100.0%", name
            assert float(b_mean) == 0 and float(b_std) == 0, name
        else:  # BatchNorm: weight 1, bias 0
            assert float(w_mean) == 1.0 and zeros == "0.0%", name
    assert rows["stem.0"][2] == "64x3x3x3" and rows["fc"][2] == "10x2048"
    assert rows["layers.13.shortcut.0"][2] == "2048x1024x1x1"


def test_init_report_bias_normal_and_bad_input(here):
    proc = here("init_report.py", "model=mnist_fnn", "init=bias_normal", "bias_scale=up")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if " Linear " in line]
    assert [r[0] for r in rows] == ["0", "2"] or [r[0] for r in rows] == ["1", "3"]
    assert all(r[5] == "100.0%" for r in rows)
    assert 30 < float(rows[0][7]) < 300  # N(0, 1) x 100 over 500 biases
    bad = here("init_report.py", "model.activation=swish")
    assert bad.returncode != 0
    assert bad.stderr.strip().startswith("error: model.activation")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    proc = cli("train.py", "trainer=cpu", f"paths.log_dir={tmp_path / 'a_file' / 'logs'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: paths.log_dir: the run writes to ")
    assert f"{tmp_path / 'a_file'} is not a folder" in line


def test_gpu_speed_options_on_the_cpu_and_a_batch_over_the_split_say_what_they_do(tmp_path, here):
    proc = here(
        "train.py",
        "trainer=cpu",
        "speed=bf16",
        "batch_size=5000",
        "trainer.max_epochs=1",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [s for s in proc.stderr.splitlines() if s.startswith("warning:")]
    assert len(warnings) == 2, proc.stderr
    assert warnings[0].startswith(
        "warning: speed: this run is on the CPU: trainer.precision="
        "bf16-mixed runs bf16 autocast on the CPU"
    )
    assert "speed.tf32, speed.cudnn_benchmark, speed.channels_last do nothing" in warnings[0]
    assert warnings[1] == (
        "warning: batch_size: 5000 is larger than the training split of "
        "dataset=mnist5k (4000 images): every epoch is one step on all 4000"
    )


@pytest.mark.parametrize(
    "args", [["--help"], ["--cfg", "job"], ["--cfg", "hydra", "launcher=slurm"]]
)
def test_help_and_config_listing_import_neither_torch_nor_lightning(args):
    # What keeps `--help` under a second: it only composes the config. Checked in a fresh
    # interpreter, which reports the heavy modules it ended up with.
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['src/train.py', *{args!r}]\n"
        "try:\n    runpy.run_path('src/train.py', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('HEAVY', sorted(m for m in ('torch', 'lightning')"
        " if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "HEAVY []" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Configuration groups" in proc.stdout or "dataset:" in proc.stdout


def test_the_default_sweep_refuses_another_command_and_takes_more_seeds(tmp_path):
    """outputs/sweeps/default keeps the command that made it (command.json): the same command
    with more seeds, another launcher or logger extends or resumes it; a command that is another
    experiment (here 2 epochs instead of 1) is one error line naming sweep_name, exit 2, and
    nothing is written; with its own sweep_name it runs."""
    common = ["trainer=cpu", "+trainer.limit_train_batches=2", "callbacks.diagnostics=null"]
    common.append(f"paths.log_dir={tmp_path}")
    first = cli("train.py", "-m", "init=zero", "seed=0", "trainer.max_epochs=1", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    sweep = tmp_path / "sweeps" / "default"
    saved = json.loads((sweep / "command.json").read_text())
    assert saved == {
        "overrides": ["+trainer.limit_train_batches=2", "init=zero", "trainer.max_epochs=1"]
    }
    more = cli(
        "train.py",
        "-m",
        "init=zero",
        "seed=0,1",
        "trainer.max_epochs=1",
        "launcher=basic",
        *common,
    )
    assert more.returncode == 0, more.stderr[-2000:]
    assert "1 completed, 1 skipped" in more.stdout
    before = sorted(p.name for p in sweep.rglob("*"))
    other = cli("train.py", "-m", "init=zero", "seed=0", "trainer.max_epochs=2", *common)
    assert other.returncode == 2
    lines = other.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sweep_name: "), other.stderr
    assert "(+trainer.limit_train_batches=2 init=zero trainer.max_epochs=1)" in lines[0]
    assert sorted(p.name for p in sweep.rglob("*")) == before
    named = cli(
        "train.py",
        "-m",
        "init=zero",
        "seed=0",
        "trainer.max_epochs=2",
        "sweep_name=two",
        *common,
    )
    assert named.returncode == 0, named.stderr[-2000:]


SWEEP_REFUSALS = [
    (["hydra.launcher.stack_size=0"], "hydra.launcher.stack_size"),
    (["hydra.launcher.workers=0"], "hydra.launcher.workers"),
    (["trainer.max_epochs=0"], "trainer.max_epochs"),
    (["sweep_name=../x"], "sweep_name"),
    (["trainer=gpu"], "trainer.accelerator"),
    (["init=zero,nope"], "init"),
    (["model.activation=swish"], "model.activation"),
]


@pytest.mark.parametrize("args,key", SWEEP_REFUSALS, ids=[a[0] for a, _ in SWEEP_REFUSALS])
def test_a_refused_sweep_writes_nothing(tmp_path, args, key):
    if key == "trainer.accelerator" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    logs = tmp_path / "logs"
    trainer = [] if key == "trainer.accelerator" else ["trainer=cpu"]
    proc = cli("train.py", "-m", "seed=0,1", *trainer, *args, f"paths.log_dir={logs}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}"), proc.stderr
    assert not logs.exists(), sorted(str(p) for p in logs.rglob("*"))
    check_documented(args, lines[0], tmp_path, sweep=True)


def test_a_run_name_beyond_the_file_name_limit_is_cut_with_a_stable_hash(tmp_path):
    """Many overrides made run folder names of 237+ bytes, which failed (ENAMETOOLONG) when the
    sweep recorded the run. The name is cut and ends in a hash of every override; the full
    overrides stay in the folder; the same command finds the same folder again."""
    from zeroinit.config import MAX_NAME_BYTES

    hidden = "model.hidden=[" + ",".join(["4"] * 120) + "]"
    args = [
        "-m",
        "seed=0",
        hidden,
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "callbacks.diagnostics=null",
        "trainer=cpu",
        f"paths.log_dir={tmp_path}",
    ]
    first = cli("train.py", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    (run,) = [
        p
        for p in (tmp_path / "sweeps" / "default").iterdir()
        if p.is_dir() and not p.name.startswith(".")
    ]
    assert len(run.name.encode()) <= MAX_NAME_BYTES and run.name.endswith("-s0")
    assert hidden in (run / ".hydra" / "overrides.yaml").read_text()
    again = cli("train.py", *args)
    assert "1 skipped" in again.stdout, again.stdout[-1000:]

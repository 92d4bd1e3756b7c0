"""zeroinit.run: real training runs through run(cfg) and build_run(cfg), composed from the real
configs: one short run per model (checked against the results.json contract), image folders,
determinism, seeding, float64. What a run writes (results.json, TensorBoard): test_results.py."""

import json
import math
from pathlib import Path

import pytest
import torch

from fakedata import patch_cifar10_md5s, write_cifar10, write_image_folder, write_mnist
from zeroinit.errors import UserError
from zeroinit.results import read_results
from zeroinit.run import build_run, compose, run

SHORT = [
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "batch_size=8",
]
EPOCH_KEYS = {
    "epoch",
    "step",
    "test_acc",
    "test_loss",
    "test_top_class_frac",
    "train_loss",
    "train_acc",
    "epoch_time_s",
}
TOP_KEYS = {"status", "config", "overrides", "epochs", "final", "wall_time_s", "device", "versions"}
PAPER_NORM = "dataset.normalize={mean:[0.4914,0.4822,0.4465],std:[0.2023,0.1994,0.2010]}"


def check_results(results, run_dir, n_epochs=1):
    assert TOP_KEYS <= set(results)
    assert results["status"] == "completed"
    assert len(results["epochs"]) == n_epochs
    for i, entry in enumerate(results["epochs"], 1):
        assert set(entry) == EPOCH_KEYS
        assert entry["epoch"] == i
        for key in ("test_acc", "train_acc", "test_top_class_frac"):
            assert 0.0 <= entry[key] <= 1.0
        assert entry["step"] > 0
        for key in ("test_loss", "train_loss", "epoch_time_s"):
            assert math.isfinite(entry[key]) and entry[key] >= 0
    last = results["epochs"][-1]
    assert results["final"] == {"test_acc": last["test_acc"], "test_loss": last["test_loss"]}
    assert results["wall_time_s"] > 0
    assert results["device"].startswith("cpu")
    assert set(results["versions"]) >= {"python", "torch", "lightning"}
    assert results["versions"]["torch"] == torch.__version__
    on_disk = read_results(run_dir)  # the file says what run() returned
    assert on_disk["status"] == "completed"
    assert on_disk["epochs"] == json.loads(json.dumps(results["epochs"]))
    assert (Path(run_dir) / "checkpoints" / "last.ckpt").exists()


CASES = {
    "logreg": ["dataset=cifar10"],
    "mnist_fnn": [],  # the embedded default, mnist5k
    "mnist_cnn": ["dataset=mnist", "init=bias_uniform", "bias_scale=up"],
    "cifar_fnn": ["dataset=cifar10", "init=bias_normal", "optimizer=sgd", "optimizer.lr=0.01"],
    "cifar_cnn": ["dataset=cifar10", "init=bias_uniform"],
    "resnet50": ["dataset=cifar10", "init=bias_normal", "dataset.augment=true", PAPER_NORM],
}


@pytest.mark.parametrize("model", list(CASES))
def test_one_short_training_per_model(make_cfg, tmp_path, monkeypatch, model):
    data_dir = tmp_path / "data"
    small = model == "resnet50"  # ~4 GFLOP per image and step on the CPU: keep it tiny
    if "dataset=cifar10" in CASES[model]:
        write_cifar10(data_dir, per_batch=8, n_test=4 if small else 12)
        patch_cifar10_md5s(monkeypatch, data_dir)
    elif "dataset=mnist" in CASES[model]:
        write_mnist(data_dir, n_train=24, n_test=10)
    cfg = make_cfg(
        f"model={model}",
        *CASES[model],
        *SHORT,
        f"paths.data_dir={data_dir}",
        "dataset.download=false",
        *(["batch_size=4"] if small else []),
    )
    results = run(cfg, overrides=[f"model={model}", *CASES[model]])
    check_results(results, tmp_path)
    assert results["config"]["model"]["name"] == model
    assert results["config"]["init"]["bias_scale"] == cfg.init.bias_scale
    assert results["overrides"] == [f"model={model}", *CASES[model]]
    ckpt = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu"
    )
    assert ckpt["global_step"] == 2  # exactly the two training steps asked for


def test_image_folder_run_takes_shape_and_classes_from_the_files(make_cfg, tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("a", "b", "c"), per_class=(6, 2), size=(10, 14))
    cfg = make_cfg(
        "dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}", "model=mnist_cnn", *SHORT
    )
    results = run(cfg)
    check_results(results, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    fc = [v for k, v in ckpt["state_dict"].items() if k.endswith("weight")][-1]
    assert tuple(fc.shape) == (3, 32 * 10 * 14)


def short_run(make_cfg, out_dir, *overrides):
    cfg = make_cfg(
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "batch_size=32",
        f"paths.output_dir={out_dir}",
        *overrides,
    )
    return run(cfg)


def curve(results):
    return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in results["epochs"]]


def test_same_config_and_seed_gives_identical_epochs(make_cfg, tmp_path):
    a = short_run(make_cfg, tmp_path / "a", "seed=0", "init=bias_normal")
    torch.manual_seed(987)  # whatever the global RNG holds, seed=0 must reset it
    b = short_run(make_cfg, tmp_path / "b", "seed=0", "init=bias_normal")
    assert len(a["epochs"]) == 2
    assert curve(a) == curve(b)
    assert (
        read_results(tmp_path / "a")["epochs"][1]["train_loss"]
        == read_results(tmp_path / "b")["epochs"][1]["train_loss"]
    )


def test_seed_zero_and_one_differ(make_cfg, tmp_path):
    """Guards the `if cfg.get("seed")` trap: seed 0 must seed too, and differently from 1."""
    a = short_run(make_cfg, tmp_path / "a", "seed=0")
    b = short_run(make_cfg, tmp_path / "b", "seed=1")
    assert curve(a) != curve(b)
    assert a["epochs"][0]["train_loss"] != b["epochs"][0]["train_loss"]


def test_float64_trains_every_model_one_step(make_cfg, tmp_path):
    """trainer.precision=64-true: every model takes a step in float64, its data included (the
    batches arrive as float64, also the diagnostics' probe images, which bypass Lightning's
    input conversion). The embedded digits serve every model (shape from the dataset); the
    ResNet-50 at 1/16 width, since its full-width float64 checkpoint alone takes ~20 s, and the
    symmetry metrics (the probe's user) only on the small models, to keep the test ~10 s."""
    for model in CASES:
        out = tmp_path / model
        big = model in ("cifar_cnn", "resnet50")
        narrow = ["model.widths=[4,8,16,32]"] if model == "resnet50" else []
        narrow += ["callbacks.diagnostics.symmetry=false"] if big else []
        cfg = make_cfg(
            f"model={model}",
            "init=bias_normal",
            "trainer.precision=64-true",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=1",
            "+trainer.limit_val_batches=1",
            "batch_size=4",
            "dataset.eval_batch_size=4",
            "callbacks.diagnostics.probe_size=4",
            f"paths.output_dir={out}",
            *narrow,
        )
        trainer, module, data, writer = build_run(cfg)
        before = [p.detach().clone() for p in module.parameters()]
        trainer.fit(module, datamodule=data)
        assert writer.results["status"] == "completed", (model, writer.results.get("error"))
        assert trainer.global_step == 1, model
        assert {p.dtype for p in module.parameters()} == {torch.float64}, model
        x, _ = next(iter(data.train_dataloader()))
        assert x.dtype == torch.float64, model
        assert any(
            not torch.equal(p.detach(), b.double())  # the step moved something
            for p, b in zip(module.parameters(), before)
        ), model


def test_default_run_trains_and_writes_results(make_cfg, tmp_path):
    results = run(make_cfg("trainer.max_epochs=2"))
    assert results["status"] == "completed"
    assert [e["epoch"] for e in results["epochs"]] == [1, 2]
    assert results["final"]["test_acc"] > 0.8  # 2 epochs of mnist_fnn on the 4,000 digits
    assert (tmp_path / "results.json").exists()
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_a_notebook_composes_and_runs_without_naming_a_folder(tmp_path, monkeypatch):
    # the docstring's example as written: the run goes where train.py would put it
    from zeroinit.run import compose, run

    monkeypatch.chdir(tmp_path)
    cfg = compose(
        "model=logreg",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "callbacks.diagnostics=null",
    )
    out = Path(cfg.paths.output_dir)
    assert out.parent == tmp_path / "outputs" / "runs"
    assert out.name.endswith(
        "_mnist5k-logreg-pytorch-x1-+trainer.limit_train_batches=2,"
        "callbacks.diagnostics=null,trainer.max_epochs=1-s0"
    )  # train.py's
    assert "hydra" not in cfg
    assert run(cfg)["status"] == "completed"
    assert (out / "results.json").exists()


def test_compose_takes_lists_and_tuples_of_overrides():
    want = compose("init=zero", "seed=1")
    assert compose(["init=zero", "seed=1"]).init == want.init
    assert compose(("init=zero", "seed=1")).seed == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ("init=zero seed=2",),
            "compose: 'init=zero seed=2' holds 2 overrides in one string: pass each as its own, "
            "compose('init=zero', 'seed=2')",
        ),
        ((3,), "compose: overrides are strings such as 'init=zero', got 3 (int)"),
        (
            ("init=nope",),
            "compose: In 'train': Could not find 'init/nope'; Available options in 'init': "
            "bias_normal, bias_uniform, lecun, pytorch, zero",
        ),
        (("a=1",), "compose: Could not override 'a'; To append to your config use +a=1"),
    ],
    ids=["two-in-one-string", "not-a-string", "no-such-option", "no-such-key"],
)
def test_compose_refuses_in_one_line(args, message):
    with pytest.raises(UserError) as e:
        compose(*args)
    assert str(e.value) == message

"""Stacked training (zeroinit.stacked): a member is numerically the separate run with its
config and seed, and in form a run like any other (results.json, checkpoint, TensorBoard)."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from fakedata import patch_cifar10_md5s, write_cifar10, write_image_folder, write_mnist
from test_signals import terminate_when
from test_sweep import ROOT, results
from zeroinit.results import read_results
from zeroinit.run import compose, run
from zeroinit.stacked.group import train_group
from zeroinit.stacked.layers import StackError, member_state_dict, stack_nets, stacked_state_dict

PAPER_NORM = "dataset.normalize={mean:[0.4914,0.4822,0.4465],std:[0.2023,0.1994,0.2010]}"
MODELS = {  # model -> dataset overrides; each case stacks pytorch, bias_normal, bias_uniform
    "logreg": ["dataset=mnist"],
    "mnist_fnn": [],
    "mnist_cnn": ["dataset=mnist"],
    "cifar_fnn": ["dataset=cifar10"],
    "cifar_cnn": ["dataset=cifar10"],
    "cifar_cnn-circular": ["dataset=cifar10", "model.padding_mode=circular"],
    # ResNet-50 on 8x8 RGB images (every stage still runs, down to 1x1), in the default suite
    # at 1/8 of the widths (the same 16 bottlenecks, shortcuts and BatchNorms), and full size
    # in the slow suite
    "resnet50": [
        "dataset=image_folder",
        "dataset.augment=true",
        PAPER_NORM,
        "model.widths=[8,16,32,64]",
    ],
    "resnet50-full": ["dataset=image_folder", "dataset.augment=true", PAPER_NORM],
}
LR = 1e-3  # conf/optimizer/adam.yaml
MEMBERS = [("pytorch", 0), ("bias_normal", 1), ("bias_uniform", 2)]


def member_cfgs(tmp_path, *overrides, members=MEMBERS, sub="stacked"):
    return [
        (
            compose(
                "trainer=cpu",
                f"paths.output_dir={tmp_path / sub / f'{init}-s{seed}'}",
                f"paths.log_dir={tmp_path}",
                f"init={init}",
                f"seed={seed}",
                *overrides,
            ),
            [f"init={init}", f"seed={seed}"],
        )
        for init, seed in members
    ]


def fake_data(tmp_path, monkeypatch, overrides, small=False):
    data_dir = tmp_path / "data"
    if "dataset=cifar10" in overrides:
        write_cifar10(data_dir, per_batch=8, n_test=4 if small else 12)
        patch_cifar10_md5s(monkeypatch, data_dir)
    elif "dataset=mnist" in overrides:
        write_mnist(data_dir, n_train=24, n_test=10)
    elif "dataset=image_folder" in overrides:
        write_image_folder(data_dir, classes=("a", "b"), per_class=(4, 1), size=(8, 8))
        return [f"dataset.data_dir={data_dir}"]
    return [f"paths.data_dir={data_dir}", "dataset.download=false"]


def load_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


def assert_close(g: torch.Tensor, w: torch.Tensor, what: str, rel=1e-5):
    assert g.shape == w.shape, what
    if not torch.is_floating_point(w):
        assert torch.equal(g, w), what
    else:
        assert (g - w).abs().max().item() <= rel * w.abs().max().item() + 1e-12, what


def assert_same_state(got: dict, want: dict, what: str):
    """Parameters, BatchNorm statistics and Adam moments of a member vs its separate run."""
    assert got["state_dict"].keys() == want["state_dict"].keys()
    for key, w in want["state_dict"].items():
        assert_close(got["state_dict"][key], w, f"{what} {key}", rel=1e-7)
    adam_got, adam_want = got["optimizer_states"][0]["state"], want["optimizer_states"][0]["state"]
    for i, state in adam_want.items():
        for k, v in state.items():
            assert_close(adam_got[i][k], v, f"{what} adam {i} {k}", rel=1e-7)


@pytest.mark.parametrize(
    "model", [pytest.param(m, marks=pytest.mark.slow) if "full" in m else m for m in MODELS]
)
def test_first_step_of_every_member_equals_its_separate_run(tmp_path, monkeypatch, model):
    """In float64. In float32, Adam's first step lr * g / (|g| + eps) ~ lr * sign(g) turns
    the rounding noise of gradient entries that cancel to ~0 in exact arithmetic (conv biases
    before a BatchNorm, units off for the whole batch) into steps of +-lr, and a grouped
    convolution rounds differently from a plain one (seen: cifar_cnn, 3 members, 1.8e-3 in
    net.2.bias after one step, with gradients equal to 4e-6). In float64 that noise is ~1e-16
    and member and separate run agree to 1e-7 of each tensor's scale, every entry (measured:
    1e-16 for the FNNs, 1e-8 for ResNet-50, whose BatchNorms meet the same cancellations)."""
    small = model.startswith("resnet50")  # ~4 GFLOP per 32x32 image and step: keep it tiny
    extra = [
        f"model={model.split('-')[0]}",
        *MODELS[model],
        *fake_data(tmp_path, monkeypatch, MODELS[model], small),
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
        "batch_size=4" if small else "batch_size=8",
        "callbacks.diagnostics=null",
        "trainer.precision=64-true",
    ]
    members = MEMBERS[:2] if small else MEMBERS
    jobs = member_cfgs(tmp_path, *extra, members=members)
    outcomes = train_group(jobs, stack_size=len(jobs))  # one stack, whatever is fastest
    assert [o for o, _, _ in outcomes] == ["completed"] * len(jobs)
    for (init, seed), (cfg, overrides), (_, mine, _) in zip(members, jobs, outcomes):
        separate = member_cfgs(tmp_path, *extra, members=[(init, seed)], sub="separate")[0][0]
        alone = run(separate, overrides)
        got, want = (
            load_state(tmp_path / "stacked" / f"{init}-s{seed}"),
            load_state(tmp_path / "separate" / f"{init}-s{seed}"),
        )
        assert got["global_step"] == want["global_step"] == 1
        assert_same_state(got, want, f"{model} {init}")
        entry, sep_entry = mine["epochs"][0], alone["epochs"][0]
        for key in ("train_loss", "test_loss"):
            # (the separate run's torchmetrics mean accumulates in float32)
            assert math.isclose(entry[key], sep_entry[key], rel_tol=1e-6), (model, init, key)
        # same test images, same predictions (bar an exact tie broken by rounding)
        assert abs(entry["test_acc"] - sep_entry["test_acc"]) <= 1 / 12 + 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mnist_fnn", "cifar_cnn"])
def test_a_compiled_stack_steps_as_the_eager_one(tmp_path, monkeypatch, model):
    """speed.compile=true compiles the stacked net (its forward and backward; on a GPU
    speed.compile_mode=reduce-overhead also captures them in CUDA graphs, which a CPU cannot
    check): after two steps in float64 every member's parameters and Adam moments are the
    eager stack's to 1e-7 of each tensor's scale, as the stacked-vs-separate test above."""
    extra = [
        f"model={model}",
        *MODELS[model],
        *fake_data(tmp_path, monkeypatch, MODELS[model]),
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "batch_size=8",
        "callbacks.diagnostics=null",
        "trainer.precision=64-true",
    ]
    for sub, more in (("eager", []), ("compiled", ["speed.compile=true"])):
        jobs = member_cfgs(tmp_path, *extra, *more, sub=sub)
        outcomes = train_group(jobs, stack_size=len(jobs))
        assert [o for o, _, _ in outcomes] == ["completed"] * len(jobs)
    for init, seed in MEMBERS:
        got = load_state(tmp_path / "compiled" / f"{init}-s{seed}")
        want = load_state(tmp_path / "eager" / f"{init}-s{seed}")
        assert got["global_step"] == want["global_step"] == 2
        assert_same_state(got, want, f"{model} {init} compiled")


def test_initial_parameters_are_bitwise_those_of_the_separate_runs(tmp_path):
    from zeroinit.run import build_net

    jobs = member_cfgs(tmp_path, "model=cifar_cnn", "dataset=cifar10")
    data_cfg = jobs[0][0]
    data = type("Shape", (), {"input_shape": (3, 32, 32), "num_classes": 10})()
    nets = [build_net(cfg, data) for cfg, _ in jobs]
    stacked = stack_nets(nets)
    for k, net in enumerate(nets):
        mine = member_state_dict(stacked, k)
        for key, value in net.state_dict().items():
            assert torch.equal(mine[key], value), key
    again = stacked_state_dict([member_state_dict(stacked, k) for k in range(len(nets))])
    assert all(torch.equal(again[k], v) for k, v in stacked.state_dict().items())
    assert data_cfg.model.name == "cifar_cnn"


def test_a_network_with_an_unknown_layer_is_not_stacked():
    nets = [torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LSTM(4, 4)) for _ in range(2)]
    with pytest.raises(StackError, match="LSTM"):
        stack_nets(nets)


@pytest.mark.parametrize("layout", ["features_inner", "batch_inner"])
def test_a_stacked_linear_is_its_members_linears_and_keeps_the_inputs_layout(layout):
    """Outputs and gradients (float64) are each member's nn.Linear's, and the input's gradient
    comes back in the input's own memory layout: features innermost as a conv net's Flatten
    hands them over (a transposed view of (B, K, F)), batch innermost as a previous stacked
    Linear's output is. Written the other way round, a stacked conv net's backward copied
    whole activation gradients (docs/stacking.md)."""
    torch.manual_seed(0)
    k, b, n_in, n_out = 3, 5, 7, 4
    linears = [torch.nn.Linear(n_in, n_out).double() for _ in range(k)]
    stacked = stack_nets(linears)
    if layout == "features_inner":
        x = torch.randn(b, k, n_in, dtype=torch.float64).transpose(0, 1)
    else:
        x = torch.randn(k, n_in, b, dtype=torch.float64).transpose(1, 2)
    x.requires_grad_(True)
    arriving = []  # the gradient as the layer hands it back (a leaf's .grad is re-laid out)
    x.register_hook(arriving.append)
    gy = torch.randn(k, b, n_out, dtype=torch.float64)
    (stacked(x) * gy).sum().backward()
    for i, lin in enumerate(linears):
        xi = x.detach()[i].clone().requires_grad_(True)
        (lin(xi) * gy[i]).sum().backward()
        assert torch.allclose(stacked(x)[i], lin(xi), rtol=1e-12, atol=1e-12)
        assert torch.allclose(x.grad[i], xi.grad, rtol=1e-12, atol=1e-12)
        assert torch.allclose(stacked.weight.grad[i], lin.weight.grad, rtol=1e-12, atol=1e-12)
        assert torch.allclose(stacked.bias.grad[i], lin.bias.grad, rtol=1e-12, atol=1e-12)
    innermost = 2 if layout == "features_inner" else 1
    assert arriving[0].stride(innermost) == 1, arriving[0].stride()
    stacked(x).mul_(2.0)  # its output may be changed in place, as a plain Linear's
    assert stacked.weight.grad.is_contiguous()


def test_a_stacked_linear_trains_under_bf16_autocast():
    stacked = stack_nets([torch.nn.Linear(6, 3) for _ in range(2)])
    x = torch.randn(2, 4, 6).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = stacked(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == stacked.weight.grad.dtype == torch.float32


def test_batchnorm_members_keep_their_own_batch_and_running_statistics():
    torch.manual_seed(0)
    bns = [torch.nn.BatchNorm2d(3) for _ in range(2)]
    stacked = stack_nets([torch.nn.Sequential(b) for b in bns])
    x = torch.randn(2, 5, 3, 4, 4) * torch.tensor([1.0, 10.0]).view(2, 1, 1, 1, 1)
    y = stacked(x)
    for k, bn in enumerate(bns):
        assert torch.allclose(y[k], bn(x[k]), atol=1e-5)
        assert torch.allclose(stacked[0].running_var[k], bn.running_var, rtol=1e-5)


def test_one_member_diverges_alone_and_the_others_equal_their_separate_runs(tmp_path):
    extra = [
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3",
        "batch_size=32",
        "callbacks.diagnostics=null",
    ]
    jobs = member_cfgs(tmp_path, *extra, members=[("pytorch", 0), ("bias_normal", 1)])
    # a member with PyTorch's weights and N(0, 1) x 1e38 biases: its logits overflow float32
    bad = compose(
        "trainer=cpu",
        f"paths.output_dir={tmp_path / 'stacked' / 'huge'}",
        "init=pytorch",
        "init.bias=normal",
        "init.bias_scale=1e38",
        "seed=1",
        *extra,
    )
    outcomes = train_group([jobs[0], (bad, ["init.bias_scale=1e38"]), jobs[1]], stack_size=3)
    assert [o for o, _, _ in outcomes] == ["completed", "diverged", "completed"]
    diverged = read_results(tmp_path / "stacked" / "huge")
    assert diverged["status"] == "diverged" and len(diverged["epochs"]) == 1
    assert not math.isfinite(diverged["epochs"][0]["train_loss"])
    for (init, seed), (_, mine, _) in zip(
        [("pytorch", 0), ("bias_normal", 1)], [outcomes[0], outcomes[2]]
    ):
        alone = run(member_cfgs(tmp_path, *extra, members=[(init, seed)], sub="sep")[0][0])
        for a, b in zip(mine["epochs"], alone["epochs"]):
            assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
            assert abs(a["test_acc"] - b["test_acc"]) <= 0.01


def test_members_write_what_a_separate_run_writes(tmp_path):
    """results.json keys, checkpoint, TensorBoard events + HPARAMS, diagnostics per member."""
    extra = ["trainer.max_epochs=1", "+trainer.limit_train_batches=4", "batch_size=16"]
    jobs = member_cfgs(tmp_path, *extra, members=[("zero", 0), ("bias_normal", 0)])
    train_group(jobs, stack_size=2)
    alone = run(member_cfgs(tmp_path, *extra, members=[("bias_normal", 0)], sub="sep")[0][0])
    for init in ("zero", "bias_normal"):
        run_dir = tmp_path / "stacked" / f"{init}-s0"
        results = read_results(run_dir)
        assert set(alone) <= set(results) and results["stack_size"] == 2
        assert results["config"]["init"]["name"] == init
        assert list(run_dir.glob("events.out.tfevents.*"))
        assert (run_dir / "checkpoints" / "last.ckpt").exists()
        diag = results["diagnostics"]
        assert set(diag) == set(alone["diagnostics"])
        if init == "zero":  # all-zero weights and biases: no gradient reaches the first layer
            assert diag["wakeup_step"]["1"] is None
    mine = read_results(tmp_path / "stacked" / "bias_normal-s0")["diagnostics"]
    want = alone["diagnostics"]
    assert mine["wakeup_step"] == want["wakeup_step"]
    assert mine["symmetry"]["history"]["step"] == want["symmetry"]["history"]["step"]
    for layer, values in want["first_steps"]["layers"].items():
        for a, b in zip(mine["first_steps"]["layers"][layer]["grad_norm"], values["grad_norm"]):
            assert math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-9)
    assert json.dumps(mine["symmetry"]["final"], sort_keys=True).count("null") == json.dumps(
        want["symmetry"]["final"], sort_keys=True
    ).count("null")


# ------------------------------------------------------------------ through the command line
def test_stacked_sweep_matches_the_sequential_sweep_run_for_run(tmp_path, here, monkeypatch):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    composed = []  # each job's config is composed once (the sweeper's check), not twice
    compose = ConfigLoaderImpl.load_sweep_config
    monkeypatch.setattr(
        ConfigLoaderImpl,
        "load_sweep_config",
        lambda self, *a, **k: composed.append(1) or compose(self, *a, **k),
    )
    args = [
        "init=zero,pytorch,bias_normal",
        "seed=0,1",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=5",
        "callbacks.diagnostics=null",
    ]
    stacked = here(  # the default launcher of -m
        "train.py",
        "-m",
        *args,
        "hydra.launcher.stack_size=6",
        f"paths.log_dir={tmp_path / 'a'}",
    )
    assert stacked.returncode == 0, stacked.stderr[-2000:]
    assert len(composed) == 6
    assert "stacked: 6 runs in one fit" in stacked.stdout
    assert "sweep: 6 runs: 6 completed" in stacked.stdout
    multirun = (tmp_path / "a" / "sweeps" / "default" / "multirun.yaml").read_text()
    assert "_target_: hydra_plugins.zeroinit_stacked" in multirun
    sequential = here("train.py", "-m", *args, "launcher=basic", f"paths.log_dir={tmp_path / 'b'}")
    assert sequential.returncode == 0, sequential.stderr[-2000:]
    a_runs = sorted(
        p.name
        for p in (tmp_path / "a" / "sweeps" / "default").iterdir()
        if not p.name.startswith(".") and p.name != "stacks.txt"
    )
    stacks = (tmp_path / "a" / "sweeps" / "default" / "stacks.txt").read_text().splitlines()
    assert len(stacks) == 1 and stacks[0].startswith("6 runs in one fit: ")  # every member
    assert len(stacks[0].split(", ")) == 6
    b_runs = sorted(
        p.name
        for p in (tmp_path / "b" / "sweeps" / "default").iterdir()
        if not p.name.startswith(".")
    )
    assert a_runs == b_runs and len(a_runs) == 6 + 2  # + multirun.yaml, command.json
    for name in a_runs:
        if name.endswith((".yaml", ".json")):
            continue
        a_dir, b_dir = (tmp_path / x / "sweeps" / "default" / name for x in "ab")
        a, b = results(a_dir), results(b_dir)
        assert a["status"] == b["status"] == "completed"
        same = lambda o: [x for x in o if not x.startswith(("paths.", "launcher="))]  # noqa
        assert same(a["overrides"]) == same(b["overrides"])
        assert {**a["config"], "paths": None, "logger": None} == {
            **b["config"],
            "paths": None,
            "logger": None,
        }
        for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
            assert abs(ea["test_acc"] - eb["test_acc"]) <= 0.01  # within 1 point
        assert sorted(p.name for p in (a_dir / ".hydra").iterdir()) == sorted(
            p.name for p in (b_dir / ".hydra").iterdir() if p.suffix == ".yaml"
        )
    report = here("report.py", str(tmp_path / "a" / "sweeps"))
    assert report.returncode == 0, report.stderr[-2000:]


def test_killed_stacked_sweep_resumes_to_the_uninterrupted_curves(tmp_path, here):
    args = [
        "seed=0,1,2",
        "+trainer.limit_train_batches=6",
        "trainer.max_epochs=4",
        "hydra.launcher.stack_size=3",
        "launcher=stacked",
        "callbacks.diagnostics=null",
    ]
    sweep = tmp_path / "sweeps" / "default"
    proc = subprocess.Popen(
        [sys.executable, "src/train.py", "-m", *args, f"paths.log_dir={tmp_path}"],
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 600
    try:  # kill once every member has checkpointed an epoch, before the last
        while time.time() < deadline:
            runs = list(sweep.glob("*-s[012]"))
            if len(runs) == 3 and all((r / "checkpoints" / "last.ckpt").exists() for r in runs):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    runs = sorted(sweep.glob("*-s[012]"))
    assert len(runs) == 3, "the sweep never checkpointed its members"
    assert all(results(r)["status"] == "running" and len(results(r)["epochs"]) < 4 for r in runs)
    # the kill needs a process of its own; the rerun and the reference run here
    out = here("train.py", "-m", *args, f"paths.log_dir={tmp_path}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "3 of them resumed" in out.stdout
    ref = here(
        "train.py",
        "-m",
        *args[:-3],
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path / 'ref'}",
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    for r in runs:
        resumed = results(r)
        assert resumed["status"] == "completed" and resumed["resumed_from_epoch"] >= 1
        want = results(tmp_path / "ref" / "sweeps" / "default" / r.name)
        for a, b in zip(resumed["epochs"], want["epochs"], strict=True):
            assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4)
            assert abs(a["test_acc"] - b["test_acc"]) <= 0.01


def test_a_stacked_members_checkpoint_resumes_as_a_separate_run(tmp_path):
    """The member checkpoint has a separate run's form: the one-by-one path resumes it."""
    extra = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "batch_size=32",
        "callbacks.diagnostics=null",
        "trainer.precision=64-true",
    ]
    jobs = member_cfgs(tmp_path, *extra, members=[("pytorch", 0), ("bias_normal", 1)])
    train_group(jobs, stack_size=2)
    more = [e.replace("max_epochs=1", "max_epochs=2") for e in extra]
    cfg = member_cfgs(tmp_path, *more, members=[("bias_normal", 1)])[0][0]
    resumed = run(
        cfg, ckpt_path=tmp_path / "stacked" / "bias_normal-s1" / "checkpoints" / "last.ckpt"
    )
    alone = run(member_cfgs(tmp_path, *more, members=[("bias_normal", 1)], sub="sep")[0][0])
    assert resumed["resumed_from_epoch"] == 1
    for a, b in zip(resumed["epochs"], alone["epochs"], strict=True):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-6)
        assert math.isclose(a["test_acc"], b["test_acc"], abs_tol=1e-6)


def test_sigterm_to_a_stacked_sweep_records_every_member_interrupted_and_a_rerun_resumes(
    tmp_path, here
):
    args = [
        sys.executable,
        "src/train.py",
        "-m",
        "seed=0,1",
        "launcher=stacked",
        "hydra.launcher.stack_size=2",
        "trainer=cpu",
        "trainer.max_epochs=8",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    ]
    # signal the stack once both members have checkpointed an epoch
    proc, stdout, stderr = terminate_when(
        args, lambda proc: len(list(tmp_path.glob("sweeps/default/*/checkpoints/last.ckpt"))) == 2
    )
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "by SIGTERM during epoch" in stdout and "rerun the same command to resume" in stdout
    runs = sorted(tmp_path.glob("sweeps/default/*-s[01]"))
    assert len(runs) == 2
    for r in runs:
        res = results(r)
        assert res["status"] == "interrupted" and 1 <= len(res["epochs"]) < 8
    again = here("train.py", *args[2:])  # the same command, run here
    assert again.returncode == 0, again.stderr[-2000:]
    assert "2 completed, 2 of them resumed from a checkpoint" in again.stdout
    assert all(results(r)["status"] == "completed" and len(results(r)["epochs"]) == 8 for r in runs)


@pytest.mark.parametrize("model", ["logreg", "mnist_fnn"])
def test_a_members_metrics_are_its_separate_runs(tmp_path, model):
    """A whole epoch whose last batch is smaller (4,000 images in batches of 1,500: 1,500,
    1,500, 1,000), in float64: train and test loss and accuracy, the share of its most
    predicted class and its step, as the separate run reports them. (The separate run once
    averaged its batches unweighted: 1% apart.)"""
    extra = [
        f"model={model}",
        "trainer.max_epochs=1",
        "batch_size=1500",
        "callbacks.diagnostics=null",
        "trainer.precision=64-true",
    ]
    jobs = member_cfgs(tmp_path, *extra, members=[("pytorch", 0), ("bias_normal", 1)])
    outcomes = train_group(jobs, stack_size=2)
    for (init, seed), (_, mine, _) in zip([("pytorch", 0), ("bias_normal", 1)], outcomes):
        alone = run(member_cfgs(tmp_path, *extra, members=[(init, seed)], sub="sep")[0][0])
        got, want = mine["epochs"][0], alone["epochs"][0]
        assert got["step"] == want["step"] == 3 and mine["num_classes"] == 10
        for key in ("train_loss", "train_acc", "test_loss", "test_acc", "test_top_class_frac"):
            # (the separate run's torchmetrics means accumulate in float32)
            assert math.isclose(got[key], want[key], rel_tol=1e-6), (
                model,
                init,
                key,
                got[key],
                want[key],
            )


@pytest.mark.parametrize("augment", [False, True])
def test_stacked_batches_are_the_members_own_batches_gathered_at_once(augment):
    from zeroinit.data import DeviceBatches
    from zeroinit.stacked.module import StackedBatches

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (50,), generator=g)
    members = [
        DeviceBatches(
            x,
            y,
            16,
            lambda: 2,
            seed=s,
            shuffle=True,
            augment=augment,
            mean=[0.5, 0.4, 0.3],
            std=[0.2, 0.2, 0.2],
        )
        for s in (0, 7, 9)
    ]
    stacked = list(StackedBatches(members))
    separate = list(zip(*members))
    assert len(stacked) == len(separate) == 4  # 16, 16, 16, 2
    for (sx, sy), parts in zip(stacked, separate):
        assert torch.equal(sx, torch.stack([px for px, _ in parts]))  # bit for bit
        assert torch.equal(sy, torch.stack([py for _, py in parts]))

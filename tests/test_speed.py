"""conf/speed: the opt-in speed switches compose, are checked, set what they say, and run."""

import functools

import lightning as L
import pytest
import torch

from zeroinit import speed
from zeroinit.config import build
from zeroinit.errors import UserError
from zeroinit.models import CNN
from zeroinit.run import run


@pytest.fixture(autouse=True)
def restore_fp32():
    yield
    speed.configure(None)  # a test must not leave TF32 or cudnn.benchmark on for the next


def test_default_is_full_fp32(make_cfg):
    cfg = make_cfg()
    assert cfg.trainer.precision == "32-true"
    settings = speed.configure(cfg.speed)
    assert not any(settings[k] for k in speed.SWITCHES)
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32 is False  # PyTorch's own default would be True
    assert torch.backends.cudnn.benchmark is False


@pytest.mark.parametrize(
    "preset, expected, precision",
    [
        (
            "tf32",
            {
                "tf32": True,
                "cudnn_benchmark": True,
                "channels_last": False,
                "compile": False,
                "fused_optimizer": True,
            },
            "32-true",
        ),
        (
            "bf16",
            {
                "tf32": True,
                "cudnn_benchmark": True,
                "channels_last": True,
                "compile": False,
                "fused_optimizer": True,
            },
            "bf16-mixed",
        ),
        (
            "bf16_compile",
            {
                "tf32": True,
                "cudnn_benchmark": True,
                "channels_last": True,
                "compile": True,
                "fused_optimizer": True,
            },
            "bf16-mixed",
        ),
    ],
)
def test_presets_compose(make_cfg, preset, expected, precision):
    cfg = make_cfg(f"speed={preset}")
    assert {k: cfg.speed[k] for k in expected} == expected
    assert cfg.trainer.precision == precision


def test_switches_compose_with_presets_and_the_command_line(make_cfg):
    cfg = make_cfg(
        "speed=tf32", "speed.channels_last=true", "trainer.precision=bf16-mixed", "model=mnist_cnn"
    )
    assert cfg.speed.tf32 and cfg.speed.channels_last and not cfg.speed.compile
    assert cfg.trainer.precision == "bf16-mixed"
    speed.configure(cfg.speed)
    assert torch.get_float32_matmul_precision() == "high"
    assert torch.backends.cudnn.allow_tf32 is True and torch.backends.cudnn.benchmark is True
    speed.configure(make_cfg().speed)  # the next run of a sweep is back to fp32
    assert torch.get_float32_matmul_precision() == "highest"
    assert torch.backends.cudnn.allow_tf32 is False


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("tf32", "yes", "speed.tf32"),
        ("compile_mode", "fastest", "speed.compile_mode"),
        ("turbo", True, "unknown key"),
    ],
)
def test_bad_settings_say_which_key(key, value, message):
    with pytest.raises(UserError, match=message):
        speed.configure({key: value})


def test_fused_optimizer_is_one_switch_for_the_optimizers_that_have_one(make_cfg):
    params = [torch.nn.Parameter(torch.zeros(3))]
    adam = build(make_cfg().optimizer)
    assert speed.optimizer(adam, None) is adam  # the default: the config's own (foreach)
    fused = speed.optimizer(adam, {"fused_optimizer": True})(params)
    assert fused.defaults["fused"] is True and not fused.defaults["foreach"]
    rmsprop = functools.partial(torch.optim.RMSprop, lr=0.01)  # no fused step in torch
    assert speed.optimizer(rmsprop, {"fused_optimizer": True}) is rmsprop


def test_fused_optimizer_run_on_cpu_rounds_only(make_cfg, tmp_path):
    """The fused step is the same update, rounded differently: after 3 float64 steps every
    parameter is within 1e-12 of the foreach run's, and not bitwise equal (it is not a
    no-op)."""
    states = {}
    for fused in (False, True):
        out = tmp_path / str(fused)
        results = run(
            make_cfg(
                f"speed.fused_optimizer={str(fused).lower()}",
                "trainer.precision=64-true",
                "trainer.max_epochs=1",
                "+trainer.limit_train_batches=3",
                "+trainer.limit_val_batches=1",
                "callbacks.diagnostics=null",
                f"paths.output_dir={out}",
            )
        )
        assert results["status"] == "completed"
        ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is (True if fused else None)
        states[fused] = ckpt["state_dict"]
    diffs = [(states[True][k] - v).abs().max().item() for k, v in states[False].items()]
    assert max(diffs) < 1e-12


def test_a_resumed_run_steps_as_configured_now(make_cfg, tmp_path):
    """torch restores fused/foreach with the optimizer's state: the module overrides them, so
    a run started foreach and resumed with speed.fused_optimizer=true steps fused."""
    args = [
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1",
        "callbacks.diagnostics=null",
    ]
    run(make_cfg(*args, "trainer.max_epochs=1"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    groups = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["param_groups"]
    assert groups[0]["foreach"] is True and not groups[0]["fused"]
    resumed = run(
        make_cfg(*args, "trainer.max_epochs=2", "speed.fused_optimizer=true"), ckpt_path=ckpt
    )
    assert resumed["status"] == "completed" and len(resumed["epochs"]) == 2
    groups = torch.load(ckpt, weights_only=False)["optimizer_states"][0]["param_groups"]
    assert groups[0]["fused"] is True and groups[0]["foreach"] is False


def test_fused_optimizer_with_a_gradient_scaler_is_refused(make_cfg):
    from zeroinit.config import validate

    with pytest.raises(UserError, match="speed.fused_optimizer"):
        validate(make_cfg("speed=tf32", "trainer.precision=16-mixed"))
    validate(make_cfg("speed=bf16"))  # bf16 has no scaler


class AutocastSeen(L.Callback):
    """Whether autocast was on where callbacks see gradients and the optimizer steps."""

    seen: list = []

    def on_after_backward(self, trainer, pl_module):
        AutocastSeen.seen.append(torch.is_autocast_enabled("cpu"))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        AutocastSeen.seen.append(torch.is_autocast_enabled("cpu"))


def test_backward_and_step_run_outside_autocast_as_under_automatic_optimization(make_cfg):
    AutocastSeen.seen = []
    results = run(
        make_cfg(
            "trainer.precision=bf16-mixed",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=2",
            "+trainer.limit_val_batches=1",
            "+callbacks.autocast_seen._target_=test_speed.AutocastSeen",
        )
    )
    assert results["status"] == "completed"
    assert AutocastSeen.seen == [False] * 4


def test_channels_last_keeps_values_and_outputs():
    net = CNN((1, 28, 28), 10, stages=[[4, 8]], kernel_size=5)
    x = torch.rand(3, 1, 28, 28)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    expected = net(x)
    net = speed.prepare(net, {"channels_last": True})
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(net(x), expected)


def test_channels_last_run_on_cpu(make_cfg):
    results = run(
        make_cfg(
            "model=mnist_cnn",
            "speed.channels_last=true",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
        )
    )
    assert results["status"] == "completed"
    assert results["config"]["speed"]["channels_last"] is True


def test_bf16_mixed_runs_on_cpu(make_cfg):
    results = run(
        make_cfg(
            "speed=bf16",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
        )
    )
    assert results["status"] == "completed"
    assert results["config"]["trainer"]["precision"] == "bf16-mixed"


@pytest.mark.slow
def test_compile_runs_on_cpu_and_keeps_checkpoint_keys(make_cfg, tmp_path):
    results = run(
        make_cfg(
            "speed.compile=true",
            "trainer.max_epochs=1",
            "+trainer.limit_train_batches=3",
            "+trainer.limit_val_batches=1",
        )
    )
    assert results["status"] == "completed"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in k for k in state)  # compiled in place: the usual keys

"""zeroinit.config: building objects from config nodes, the checks Hydra cannot make, and the
run names every run directory and TensorBoard run carries."""

import pytest
from omegaconf import OmegaConf

from zeroinit.config import MAX_SEED, build, flatten, format_scale, run_name, validate
from zeroinit.errors import UserError


def test_run_name_is_readable_and_safe_for_a_path():
    assert (
        run_name("mnist5k", "mnist_fnn", "bias_normal", 0.01, "", 3)
        == "mnist5k-mnist_fnn-bias_normal-x0.01-s3"
    )
    # other overrides are kept, with characters a path should not hold replaced
    assert (
        run_name("cifar10", "resnet50", "zero", 1.0, "model.widths=[4,8]", 0)
        == "cifar10-resnet50-zero-x1-model.widths=_4,8_-s0"
    )
    assert [format_scale(s) for s in (100, 1e-2, "nan", "up")] == ["100", "0.01", "nan", "up"]


def test_a_searchs_long_values_read_rounded_and_keep_their_own_folders():
    name = run_name("mnist5k", "mnist_fnn", "zero", 1.0, "optimizer.lr=0.0012345678901234", 0)
    assert name.startswith("mnist5k-mnist_fnn-zero-x1-optimizer.lr=0.001235-")
    assert (
        name.endswith("-s0")
        and len(name) == len("mnist5k-mnist_fnn-zero-x1-optimizer.lr=0.001235-") + 6 + 3
    )
    twin = run_name("mnist5k", "mnist_fnn", "zero", 1.0, "optimizer.lr=0.0012345678901299", 0)
    assert twin != name  # the same rounded value, another folder
    again = run_name("mnist5k", "mnist_fnn", "zero", 1.0, "optimizer.lr=0.0012345678901234", 0)
    assert again == name  # stable: a rerun finds it
    assert run_name("m", "f", "z", 1.0, "optimizer.lr=0.001,trainer.max_epochs=3", 0) == (
        "m-f-z-x1-optimizer.lr=0.001,trainer.max_epochs=3-s0"  # short values as typed
    )


def test_flatten_gives_dotted_keys():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_build_drops_labels_and_keeps_a_constructors_own_message():
    node = OmegaConf.create(
        {"_target_": "zeroinit.init.InitScheme", "name": "x", "weight": "zero", "bias": "normal"}
    )
    assert build(node, ignore=["name"]).name == ""
    with pytest.raises(UserError, match=r"^init.bias: 'nope' is not one of"):
        build(OmegaConf.merge(node, {"bias": "nope"}))


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("seed", -1, f"an integer from 0 to {MAX_SEED}"),
        ("seed", MAX_SEED + 1, f"an integer from 0 to {MAX_SEED}"),
        ("batch_size", 0, "an integer > 0"),
        ("optimizer.lr", float("nan"), "a finite number > 0"),
        ("trainer.max_epochs", 1.5, "an integer > 0"),
        ("trainer.limit_train_batches", 0, "a number of batches >= 1"),
        ("trainer.limit_train_batches", -1, "a number of batches >= 1"),
        ("trainer.limit_train_batches", 1.5, "a number of batches >= 1"),
        ("model.batchnorm", "maybe", "true or false"),
    ],
)
def test_validate_names_the_key_and_what_is_allowed(make_cfg, key, value, allowed):
    cfg = make_cfg()
    OmegaConf.update(cfg, key, value, force_add=True)  # (+key= on the command line)
    with pytest.raises(UserError, match=rf"^{key}: .* allowed: {allowed}"):
        validate(cfg)
    validate(make_cfg())  # the defaults pass


@pytest.mark.parametrize("optimizer", ["adam", "sgd optimizer.momentum=0.9"])
def test_the_configured_optimizer_steps_exactly_as_torchs_per_tensor_loop(make_cfg, optimizer):
    # conf/optimizer sets foreach (it is faster); the experiment's numbers must not move.
    import torch

    from zeroinit.config import build

    name, *rest = optimizer.split()
    cfg = make_cfg(f"optimizer={name}", *rest)
    assert cfg.optimizer.foreach is True
    results = []
    for factory in (build(cfg.optimizer), build({**cfg.optimizer, "foreach": False})):
        torch.manual_seed(0)
        params = [
            torch.randn(15, 50, 78, requires_grad=True),
            torch.randn(15, 50, requires_grad=True),
        ]
        opt = factory(params)
        g = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_a_group_option_is_checked_against_conf_unless_another_config_folder_is_named():
    from zeroinit.config import check_group_choices

    check_group_choices(["model=mnist_cnn", "-m", "init=zero,pytorch", "logger=[tensorboard,csv]"])
    check_group_choices(["seed=range(0,3)", "model.activation=relu", "hydra/launcher=joblib"])
    with pytest.raises(UserError, match=r"^init: 'nope' is not one of conf/init/: "):
        check_group_choices(["-m", "init=zero,nope"])
    check_group_choices(["--config-dir", "/my/conf", "model=mine"])  # Hydra looks there too
    check_group_choices(["+hydra.searchpath=[file:///my/conf]", "model=mine"])
    check_group_choices(["-m", "logger=[tensorboard],[tensorboard,mlflow]", "model=null"])
    with pytest.raises(UserError, match=r"^logger: 'nope' is not one of conf/logger/: "):
        check_group_choices(["-m", "logger=[tensorboard],[tensorboard,nope]"])
    with pytest.raises(UserError, match=r"^init: 'nope' is not one of"):
        check_group_choices(["-m", "init=choice(zero,nope)"])

"""The loaders on small files written in the real formats (through torchvision's own dataset
classes), the embedded mnist5k split, and the device-resident batching."""

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.datasets import CIFAR10

from fakedata import (
    CIFAR_CLASSES,
    patch_cifar10_md5s,
    write_cifar10,
    write_image_folder,
    write_mnist,
)
from zeroinit.config import build
from zeroinit.data import (
    DeviceBatches,
    ImageDataModule,
    load_cifar10,
    load_image_folder,
    load_mnist,
    load_mnist5k,
    load_random_cifar10,
    random_crop_flip,
)
from zeroinit.errors import UserError

# ----------------------------------------------------------------------- random CIFAR-shaped


def test_random_cifar10_is_cifar_shaped_and_the_same_every_time(make_cfg):
    (x, y), (xt, yt), classes = load_random_cifar10()
    assert x.shape == (10_000, 3, 32, 32) and xt.shape == (1_000, 3, 32, 32)
    assert x.dtype == torch.uint8 and y.dtype == torch.int64 and len(classes) == 10
    assert y.min() == 0 and y.max() == 9 and x.float().std() > 70  # uniform 0..255: ~74
    again = load_random_cifar10()
    assert torch.equal(x, again[0][0]) and torch.equal(yt, again[1][1])
    data = build(make_cfg("dataset=random_cifar10").dataset).load()  # declared shape checked
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10


# ----------------------------------------------------------------------------- MNIST (IDX)


def test_mnist_idx_files_through_torchvision(tmp_path):
    train_x, train_y, test_x, test_y = write_mnist(tmp_path, n_train=20, n_test=10)
    (xtr, ytr), (xte, yte), classes = load_mnist(str(tmp_path), download=False)
    assert xtr.shape == (20, 1, 28, 28) and xte.shape == (10, 1, 28, 28)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert torch.equal(xtr[:, 0], torch.from_numpy(train_x))
    assert torch.equal(xte[:, 0], torch.from_numpy(test_x))
    assert ytr.tolist() == train_y.tolist() and yte.tolist() == test_y.tolist()
    assert len(classes) == 10


def test_mnist_through_the_dataset_config(make_cfg, tmp_path):
    write_mnist(tmp_path / "data", n_train=20, n_test=10)
    cfg = make_cfg("dataset=mnist", f"paths.data_dir={tmp_path / 'data'}", "dataset.download=false")
    data = build(cfg.dataset, batch_size=8, seed=0).load()
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert len(data.train_set[0]) == 20 and len(data.test_set[0]) == 10


@pytest.mark.parametrize(
    "loader,folder", [(load_mnist, "MNIST/raw"), (load_cifar10, "cifar-10-batches-py")]
)
def test_missing_files_without_download_is_a_clear_user_error(tmp_path, loader, folder):
    with pytest.raises(UserError) as e:
        loader(str(tmp_path), download=False)
    message = str(e.value)
    assert str(tmp_path / folder) in message  # which folder was searched
    assert "dataset=mnist5k" in message  # what works offline
    assert "dataset.download=false" in message
    assert "http" in message  # where the files come from
    assert "\n" not in message


def test_missing_mnist_through_the_datamodule(make_cfg, tmp_path):
    cfg = make_cfg("dataset=mnist", f"paths.data_dir={tmp_path}", "dataset.download=false")
    with pytest.raises(UserError, match="dataset=mnist5k"):
        build(cfg.dataset, batch_size=8, seed=0).load()


# --------------------------------------------------------------------- CIFAR-10 (pickles)


def test_cifar10_python_batches_through_torchvision(tmp_path, monkeypatch):
    train_x, train_y, test_x, test_y = write_cifar10(tmp_path, per_batch=4, n_test=10)
    patch_cifar10_md5s(monkeypatch, tmp_path)
    (xtr, ytr), (xte, yte), classes = load_cifar10(str(tmp_path), download=False)
    assert xtr.shape == (20, 3, 32, 32) and xte.shape == (10, 3, 32, 32)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    # channel-major rows come back as CHW images, pixel for pixel, in batch order
    assert torch.equal(xtr, torch.from_numpy(train_x))
    assert torch.equal(xte, torch.from_numpy(test_x))
    assert ytr.tolist() == train_y.tolist() and yte.tolist() == test_y.tolist()
    assert classes == CIFAR_CLASSES


def test_cifar10_checksum_mismatch_is_a_user_error(tmp_path, monkeypatch):
    """torchvision's own integrity check runs: a corrupted batch is refused."""
    write_cifar10(tmp_path)
    patch_cifar10_md5s(monkeypatch, tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="corrupted"):
        load_cifar10(str(tmp_path), download=False)


def test_cifar10_unpatched_checksums_refuse_fake_files(tmp_path):
    write_cifar10(tmp_path)
    assert CIFAR10.train_list[0][1] == "c99cafc152244af753f735de768cd75f"  # not patched
    with pytest.raises(UserError):
        load_cifar10(str(tmp_path), download=False)


# -------------------------------------------------------------------------- image_folder


def test_image_folder_pngs(tmp_path):
    written = write_image_folder(
        tmp_path, classes=("cat", "dog", "emu"), per_class=(3, 2), size=(12, 10)
    )
    (xtr, ytr), (xte, yte), classes = load_image_folder(str(tmp_path))
    assert classes == ["cat", "dog", "emu"]  # from the folder names
    assert xtr.shape == (9, 3, 12, 10) and xte.shape == (6, 3, 12, 10)
    assert xtr.dtype == torch.uint8
    assert ytr.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and yte.tolist() == [0, 0, 1, 1, 2, 2]
    expected = torch.stack([img for cls in classes for img in written["train"][cls]])
    assert torch.equal(xtr, expected)  # PNG is lossless


def test_image_folder_grayscale_stays_one_channel(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=(2, 1), size=(8, 8), channels=1)
    (xtr, _), (xte, _), _ = load_image_folder(str(tmp_path))
    assert xtr.shape == (4, 1, 8, 8) and xte.shape == (2, 1, 8, 8)


def test_image_folder_datamodule_reads_shape_and_classes(make_cfg, tmp_path):
    write_image_folder(tmp_path / "imgs", classes=("x", "y"), per_class=(2, 2), size=(9, 7))
    cfg = make_cfg("dataset=image_folder", f"dataset.data_dir={tmp_path / 'imgs'}")
    data = build(cfg.dataset, batch_size=4, seed=0)
    assert data.input_shape == (3, 9, 7) and data.num_classes == 2


def test_image_folder_mixed_sizes_is_a_user_error(tmp_path):
    from torchvision.io import write_png

    write_image_folder(tmp_path, classes=("a", "b"), per_class=(2, 1), size=(8, 8))
    odd = tmp_path / "train" / "b" / "99.png"
    write_png(torch.zeros(3, 8, 9, dtype=torch.uint8), str(odd))
    with pytest.raises(UserError, match="one size") as e:
        load_image_folder(str(tmp_path))
    assert "99.png" in str(e.value) and "dataset.data_dir" in str(e.value)


def test_image_folder_missing_split_is_a_user_error(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=(1, 1))
    import shutil

    shutil.rmtree(tmp_path / "test")
    with pytest.raises(UserError, match="dataset.data_dir"):
        load_image_folder(str(tmp_path))


def test_an_image_folder_with_one_class_is_a_user_error(tmp_path):
    """With one class every prediction is right: accuracy 1.0 that means nothing."""
    write_image_folder(tmp_path, classes=("a",), per_class=(2, 1), size=(8, 8))
    with pytest.raises(UserError, match=r"^dataset.data_dir: .* holds one class \(a\)"):
        load_image_folder(str(tmp_path))


def test_mixed_grayscale_and_rgb_images_are_converted_with_one_warning(tmp_path, capsys):
    from torchvision.io import write_png

    write_image_folder(tmp_path, classes=("a", "b"), per_class=(2, 1), size=(8, 8))  # RGB
    for name in ("98.png", "99.png"):
        write_png(torch.full((1, 8, 8), 7, dtype=torch.uint8), str(tmp_path / "train" / "b" / name))
    (xtr, _), _, _ = load_image_folder(str(tmp_path))
    assert xtr.shape == (6, 3, 8, 8)
    assert torch.equal(xtr[-1], torch.full((3, 8, 8), 7, dtype=torch.uint8))  # gray -> RGB
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "warning: dataset.data_dir: 2 of 8 images converted to RGB"
    ), err
    assert "98.png (1 channel(s))" in err[0]
    write_image_folder(tmp_path / "plain", classes=("a", "b"), per_class=(1, 1), size=(8, 8))
    load_image_folder(str(tmp_path / "plain"))
    assert capsys.readouterr().err == ""  # one mode: nothing to say


# ------------------------------------------------------------------------------ mnist5k


def test_mnist5k_split_is_stratified_and_fixed():
    (xtr, ytr), (xte, yte), classes = load_mnist5k()
    assert xtr.shape == (4000, 1, 28, 28) and xte.shape == (1000, 1, 28, 28)
    assert xtr.dtype == torch.uint8
    assert classes == [str(c) for c in range(10)]
    assert torch.bincount(yte, minlength=10).tolist() == [100] * 10
    assert torch.bincount(ytr, minlength=10).tolist() == [400] * 10
    assert xtr.float().mean() > 10  # real digits, not blank
    # train and test are disjoint images
    train_rows = {bytes(r) for r in xtr.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in xte.flatten(1).numpy())
    torch.manual_seed(12345)  # the run's seed must not move the split
    np.random.seed(12345)
    (xtr2, ytr2), (xte2, yte2), _ = load_mnist5k()
    assert torch.equal(xtr, xtr2) and torch.equal(xte, xte2)
    assert torch.equal(ytr, ytr2) and torch.equal(yte, yte2)


# -------------------------------------------------------------------------- DeviceBatches


def make_batches(n=23, batch_size=5, seed=0, epoch=0, **kw):
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n)
    state = {"epoch": epoch}
    return DeviceBatches(
        x, y, batch_size, lambda: state["epoch"], seed=seed, shuffle=True, **kw
    ), state


def labels(batches):
    return [b[1].tolist() for b in batches]


def test_batches_same_seed_and_epoch_same_batches():
    a, _ = make_batches(seed=3, epoch=2)
    b, _ = make_batches(seed=3, epoch=2)
    assert labels(a) == labels(b)
    assert labels(a) == labels(a)  # iterating again repeats the epoch


def test_batches_order_changes_with_epoch_and_seed():
    a, state = make_batches(seed=3, epoch=0)
    first = labels(a)
    state["epoch"] = 1
    assert labels(a) != first
    b, _ = make_batches(seed=4, epoch=0)
    assert labels(b) != first
    assert sorted(sum(first, [])) == list(range(23))
    assert sum(first, []) != list(range(23))  # shuffled


def test_batches_cover_every_sample_once_per_epoch():
    a, state = make_batches(n=23, batch_size=5)
    assert len(a) == 5
    for epoch in range(3):
        state["epoch"] = epoch
        batches = list(a)
        assert len(batches) == len(a)
        assert [len(y) for _, y in batches] == [5, 5, 5, 5, 3]
        seen = torch.cat([y for _, y in batches])
        assert sorted(seen.tolist()) == list(range(23))
        for x, y in batches:  # images travel with their labels
            assert torch.allclose(x[:, 0, 0, 0] * 255, y.float())


def test_eval_batches_are_in_order():
    x = torch.arange(7, dtype=torch.uint8).view(7, 1, 1, 1)
    batches = DeviceBatches(x, torch.arange(7), 3, lambda: 5)
    assert labels(batches) == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_are_disjoint_and_equal(world):
    n = 23
    shards = []
    for rank in range(world):
        b, _ = make_batches(n=n, batch_size=4, seed=1, epoch=2, rank=rank, world=world)
        shards.append(sum(labels(b), []))
        assert len(b) == len(list(b))
    sizes = {len(s) for s in shards}
    assert sizes == {n // world}  # equal length: every rank takes the same number of steps
    flat = sum(shards, [])
    assert len(set(flat)) == len(flat)  # disjoint
    # same permutation on every rank, so together they cover all but n % world samples
    assert len(flat) == n - n % world


def test_eval_shards_cover_the_whole_test_split():
    x = torch.zeros(10, 1, 1, 1, dtype=torch.uint8)
    seen = []
    for rank in range(3):
        seen += labels(DeviceBatches(x, torch.arange(10), 4, lambda: 0, rank=rank, world=3))
    assert sorted(sum(seen, [])) == list(range(10))


def test_batches_convert_to_unit_range_and_normalize():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 4, 4), dtype=torch.uint8, generator=g)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    plain = DeviceBatches(x, torch.arange(6), 6, lambda: 0)
    ((xb, _),) = list(plain)
    assert xb.dtype == torch.float32
    assert torch.equal(xb, x.float() / 255)
    normed = DeviceBatches(x, torch.arange(6), 6, lambda: 0, mean=mean, std=std)
    ((xn, _),) = list(normed)
    expected = TF.normalize(x.float() / 255, mean, std)
    assert torch.allclose(xn, expected, atol=1e-6)
    assert not torch.allclose(xn, xb)


def test_random_crop_flip_equals_torchvision():
    """The batched augmentation = torchvision v1 functional pad(4) + crop + hflip, sample by
    sample, for given offsets (every corner included) and flips."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 6, 5, generator=g)
    offsets = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0], [3, 5], [4, 4], [1, 7], [6, 2]])
    flips = torch.tensor([False, True, False, True, True, False, False, True])
    out = random_crop_flip(x, offsets, flips, pad=4)
    assert out.shape == x.shape
    for i in range(len(x)):
        ref = TF.crop(TF.pad(x[i], [4], fill=0), int(offsets[i, 0]), int(offsets[i, 1]), 6, 5)
        if flips[i]:
            ref = TF.hflip(ref)
        assert torch.equal(out[i], ref), i
    assert torch.equal(out[5], x[5])  # offset (4, 4), no flip: the original image


def test_augmentation_only_on_train_batches():
    x = torch.randint(
        0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    y = torch.arange(16)
    aug = DeviceBatches(x, y, 16, lambda: 0, seed=0, shuffle=True, augment=True)
    ((xa, ya),) = list(aug)
    ((xa2, _),) = list(aug)
    assert torch.equal(xa, xa2)  # seeded: same epoch, same crops
    changed = [not torch.equal(xa[i], x[ya[i]].float() / 255) for i in range(16)]
    assert sum(changed) >= 8  # P(offset (4,4) and no flip) = 1/162 per image
    # every augmented image is a crop (maybe mirrored) of its own padded source
    for i in range(16):
        padded = TF.pad(x[ya[i]].float() / 255, [4], fill=0)
        found = any(
            torch.equal(TF.crop(padded, r, c, 8, 8), img)
            for r in range(9)
            for c in range(9)
            for img in (xa[i], TF.hflip(xa[i]))
        )
        assert found, i


def test_datamodule_train_and_test_loaders(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=(5, 3), size=(8, 8))
    data = ImageDataModule(
        "image_folder",
        batch_size=4,
        eval_batch_size=100,
        data_dir=str(tmp_path),
        augment=True,
        normalize={"mean": [0.5] * 3, "std": [0.25] * 3},
        seed=7,
    )
    data.setup("fit")
    train, test = data.train_dataloader(), data.val_dataloader()
    assert len(train) == 3 and len(test) == 1
    ((xt, yt),) = list(test)
    # the test split: whole, in order, normalized, never augmented
    assert torch.equal(yt, data.test_set[1])
    assert torch.allclose(xt, (data.test_set[0].float() / 255 - 0.5) / 0.25)
    assert sorted(torch.cat([y for _, y in train]).tolist()) == sorted(data.train_set[1].tolist())


def test_datamodule_normalize_needs_one_value_per_channel(tmp_path):
    write_image_folder(tmp_path, classes=("a", "b"), per_class=(1, 1), size=(4, 4))
    data = ImageDataModule(
        "image_folder", data_dir=str(tmp_path), normalize={"mean": [0.5], "std": [0.2]}
    )
    with pytest.raises(UserError, match="dataset.normalize"):
        data.load()


def test_declared_shape_is_checked_against_the_files(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    patch_cifar10_md5s(monkeypatch, tmp_path)
    data = ImageDataModule(
        "cifar10", data_dir=str(tmp_path), download=False, input_shape=[1, 28, 28], num_classes=10
    )
    with pytest.raises(UserError, match="dataset.input_shape"):
        data.load()


def test_device_batches_are_the_indexed_rows():
    x = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(50)
    for xb, yb in DeviceBatches(x, y, 16, lambda: 3, seed=1, shuffle=True):
        assert torch.equal(xb, x[yb].float().div_(255))  # labels = row numbers


def test_a_new_dataset_is_one_registry_entry(tmp_path, monkeypatch, here):
    # DATASETS["<name>"] = Dataset(loader) + conf/dataset/<name>.yaml (`source: <name>`; here
    # its keys are given on the command line): read, checked by the preflight, trained on
    from zeroinit import data

    def load_tiny(data_dir=None, download=False):
        g = torch.Generator().manual_seed(0)

        def split(n):
            return (
                torch.randint(
                    0,
                    256,
                    (n, 1, 6, 6),
                    generator=g,
                    dtype=torch.uint8,
                ),
                torch.randint(0, 3, (n,), generator=g),
            )

        return split(60), split(20), ["a", "b", "c"]

    monkeypatch.setitem(data.DATASETS, "tiny", data.Dataset(load_tiny))
    out = here(
        "train.py",
        "dataset.source=tiny",
        "dataset.name=tiny",
        "dataset.input_shape=null",
        "dataset.num_classes=null",
        "model=logreg",
        "trainer.max_epochs=1",
        "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (results,) = tmp_path.rglob("results.json")
    assert results.parent.name.startswith("2") and "_tiny-logreg-" in results.parent.name
    bad = here("train.py", "dataset.source=nope", f"paths.log_dir={tmp_path / 'b'}")
    assert bad.returncode == 2 and "dataset.source: 'nope' is not one of mnist5k" in bad.stderr

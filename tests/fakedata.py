"""Small datasets written in the real on-disk formats, for the loaders to read back.

- MNIST: the IDX ("ubyte") files torchvision.datasets.MNIST reads from <root>/MNIST/raw/.
- CIFAR-10: the pickled python batches torchvision.datasets.CIFAR10 reads from
  <root>/cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta). torchvision checks
  their md5s against its class attributes; `cifar10_md5s` gives the values to patch in.
- image_folder: PNGs in <root>/train/<class>/ and <root>/test/<class>/.
"""

import hashlib
import pickle
import struct
from pathlib import Path

import lightning as L
import numpy as np
import torch

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: magic 0x00 0x00 <type 0x08 = ubyte> <ndim>, big-endian int32 dims, then the data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, array.ndim]))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def write_mnist(root, n_train=20, n_test=10, seed=0):
    """Random 28x28 digits in MNIST's raw IDX files; returns (train_x, train_y, test_x, test_y)
    as numpy arrays (images (N, 28, 28) uint8, labels (N,) uint8)."""
    rng = np.random.RandomState(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(y)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        arrays += [x, y]
    return tuple(arrays)


def write_cifar10(root, per_batch=4, n_test=10, seed=0):
    """CIFAR-10's python batches: each a pickled dict with 'data' (N, 3072) uint8 rows in
    channel-major (R plane, G plane, B plane) order and 'labels'. Returns (train_x, train_y,
    test_x, test_y) with images as (N, 3, 32, 32) uint8."""
    rng = np.random.RandomState(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = [], []

    def batch(name, n, label_name):
        x = rng.randint(0, 256, size=(n, 3, 32, 32)).astype(np.uint8)
        y = [int(v) for v in rng.randint(0, 10, size=n)]
        entry = {
            "batch_label": label_name,
            "labels": y,
            "data": x.reshape(n, 3072),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        return x, y

    for i in range(1, 6):
        x, y = batch(f"data_batch_{i}", per_batch, f"training batch {i} of 5")
        train_x.append(x)
        train_y += y
    test_x, test_y = batch("test_batch", n_test, "testing batch 1 of 1")
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(
            {"label_names": CIFAR_CLASSES, "num_cases_per_batch": per_batch, "num_vis": 3072}, f
        )
    return np.concatenate(train_x), np.array(train_y), test_x, np.array(test_y)


def md5(path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def patch_cifar10_md5s(monkeypatch, root) -> None:
    """Point torchvision's CIFAR10 checksums at the files written under `root`, so its own
    integrity check runs and passes on them."""
    from torchvision.datasets import CIFAR10

    folder = Path(root) / CIFAR10.base_folder
    monkeypatch.setattr(
        CIFAR10,
        "train_list",
        [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)],
    )
    monkeypatch.setattr(CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": md5(folder / "batches.meta")})


def write_image_folder(
    root, classes=("cat", "dog", "emu"), per_class=(3, 2), size=(12, 10), channels=3, seed=0
):
    """PNGs in <root>/<split>/<class>/NN.png; returns {split: {class: [CHW uint8 tensors]}}
    in file-name order."""
    from torchvision.io import write_png

    g = torch.Generator().manual_seed(seed)
    written = {}
    for split, n in zip(("train", "test"), per_class):
        written[split] = {}
        for cls in classes:
            folder = Path(root) / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            written[split][cls] = []
            for i in range(n):
                img = torch.randint(0, 256, (channels, *size), generator=g, dtype=torch.uint8)
                write_png(img, str(folder / f"{i:02d}.png"))
                written[split][cls].append(img)
    return written


class FailAtEpochEnd(L.Callback):
    """Raises at the end of the first training epoch: a run that crashes mid-way.
    Use it as `+callbacks.boom._target_=fakedata.FailAtEpochEnd`."""

    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("boom at the end of the epoch")


class DeniedAtEpochEnd(L.Callback):
    """Raises what a folder made unwritable raises (EACCES) at the end of the first epoch: a
    permission lost while a sweep runs (as root a real chmod would not stop the write)."""

    def on_train_epoch_end(self, trainer, pl_module):
        import errno
        import os

        raise OSError(errno.EACCES, os.strerror(errno.EACCES), trainer.default_root_dir)


class NoSpaceAtEpochEnd(L.Callback):
    """Raises what a full disk raises at the end of the first training epoch: a failure every
    run of a sweep would share. Use it as `+callbacks.boom._target_=fakedata.NoSpaceAtEpochEnd`
    (tests/ on PYTHONPATH)."""

    def on_train_epoch_end(self, trainer, pl_module):
        import errno
        import os

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), trainer.default_root_dir)


class RemoveFolderAtEpochEnd(L.Callback):
    """Removes `folder` (a sweep's) at the end of the first training epoch of the run with
    seed `when`: a sweep folder deleted while the sweep runs. Use it as
    `+callbacks.rm._target_=fakedata.RemoveFolderAtEpochEnd +callbacks.rm.folder=<path>
    +callbacks.rm.when=1 +callbacks.rm.seed='${seed}'`."""

    def __init__(self, folder: str, when: int, seed: int):
        self.folder, self.now = folder, seed == when

    def on_train_epoch_end(self, trainer, pl_module):
        import shutil

        if self.now:
            shutil.rmtree(self.folder, ignore_errors=True)

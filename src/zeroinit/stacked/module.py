"""The LightningModule of a stacked group and the batches it trains on.

StackedClassifier is Classifier (zeroinit.module) for K members at once: the loss it
minimizes is the sum of the members' own mean cross-entropies, so each member's parameters
get exactly the gradient of its own loss; the optimizer (elementwise: Adam, SGD, ...) then
acts as K independent optimizers. Per-member loss and accuracy accumulate on the device.

StackedBatches zips the K members' own DeviceBatches (each seeded with its member's seed),
so member k sees the very batches, in the same order and with the same augmentation draws,
as the separate run with its config.
"""

import torch
import torch.nn.functional as F
from torch import nn

from zeroinit.data import DeviceBatches, ImageDataModule
from zeroinit.module import SummingModule, add_batch, add_votes, means, top_class_fracs

# Optimizers whose update of an entry depends only on that entry's own history: one of them
# over stacked tensors is K independent optimizers. (LBFGS, LARS-like and norm-based
# optimizers look at whole tensors and would mix members.)
ELEMENTWISE_OPTIMIZERS = {
    "Adam",
    "AdamW",
    "SGD",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "Adamax",
    "NAdam",
    "RAdam",
}


def member_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each member's mean cross-entropy (K,) of logits (K, B, classes) and labels (K, B).
    A StackedLinear's logits are a view of (K, classes, B): with the classes as dim 1, as
    cross_entropy takes them, that is the layout itself, no copy to (K*B, classes) rows (15
    logistic regressions on the CPU: loss and its backward 0.19 ms instead of 0.46 ms a step;
    the same values in float32, 1 ulp apart in float64)."""
    return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(dim=1)


class StackedClassifier(SummingModule):
    def __init__(self, net: nn.Module, k: int, optimizer, num_classes: int):
        super().__init__(net, k, optimizer, num_classes)  # per-member sums (3, K); a member's
        self.k = k  # checkpoint gets its column (members.StackedRuns.member_checkpoint)

    def _step(self, batch, split):
        x, y = batch  # (K, B, ...), (K, B)
        logits = self.net(x)  # (K, B, classes)
        losses = member_losses(logits, y)
        # max().indices = argmax (the first of tied maxima, NaN counting as the largest), but
        # over the strided class dim argmax is many times slower than max on the CPU
        predicted = logits.detach().max(dim=2).indices
        add_batch(getattr(self, f"{split}_sums"), losses, (predicted == y).sum(dim=1), y.shape[1])
        if split == "test":
            add_votes(self.test_votes, predicted)
        return losses.sum()

    def epoch_metrics(self) -> list[dict[str, float]]:
        """Each member's train and test loss/accuracy of the epoch just finished, then reset."""
        per_split = [means(getattr(self, f"{split}_sums"), split) for split in ("train", "test")]
        per_split.append(top_class_fracs(self.test_votes))
        return [{**train, **test, **top} for train, test, top in zip(*per_split)]


class StackedBatches:
    """K DeviceBatches in lockstep -> (x (K, B, ...), y (K, B)) per step: each member's own
    indices (and augmentation draws), gathered, converted and normalized for all K at once."""

    def __init__(self, members: list[DeviceBatches]):
        self.members = members

    def __len__(self):
        return len(self.members[0])

    def __iter__(self):
        first = self.members[0]  # the members share the data and how it is prepared
        for parts in zip(*(m.indices() for m in self.members)):
            idx, offsets, flips = (None if p[0] is None else torch.stack(p) for p in zip(*parts))
            yield first.take(idx, offsets, flips)


class RepeatedBatches:
    """The test split, the same for every member: each batch viewed K times (no copy)."""

    def __init__(self, batches: DeviceBatches, k: int):
        self.batches, self.k = batches, k

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            yield x.expand(self.k, *x.shape), y.expand(self.k, *y.shape)


class StackedDataModule(ImageDataModule):
    """The group's dataset, on the device once; training batches per member seed."""

    def __init__(self, data: ImageDataModule, seeds: list[int]):
        super().__init__(
            data.source,
            data.batch_size,
            data.eval_batch_size,
            data.data_dir,
            data.download,
            augment=data.augment,
            seed=seeds[0],
            name=data.name,
        )
        self.mean, self.std = data.mean, data.std
        self.declared_shape, self.declared_classes = data.declared_shape, data.declared_classes
        self.train_set, self.test_set, self.classes = data.train_set, data.test_set, data.classes
        self.seeds = list(seeds)

    def member_train_batches(self, seed: int) -> DeviceBatches:
        return DeviceBatches(
            *self.train_set,
            self.batch_size,
            self._epoch,
            seed=seed,
            shuffle=True,
            augment=self.augment,
            mean=self.mean,
            std=self.std,
            dtype=self.dtype,
        )

    def train_dataloader(self):
        return StackedBatches([self.member_train_batches(s) for s in self.seeds])

    def val_dataloader(self):
        return RepeatedBatches(super().val_dataloader(), len(self.seeds))

    def member_val_dataloader(self):
        """The test batches as a separate run sees them (diagnostics' probe batch)."""
        return super().val_dataloader()

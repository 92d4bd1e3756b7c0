"""The LightningModule: cross-entropy classification of any `net`, and the epoch's metrics.

Loss and accuracy accumulate on the device as sums (loss x images, correct, images; no host
sync per step) and are read once per epoch by `epoch_metrics()`; what gets logged and written
is the job of callbacks (results.py). The stacked launcher's StackedClassifier keeps the same
sums per member (`add_batch`, `means`).
"""

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn


def add_batch(sums: torch.Tensor, losses: torch.Tensor, correct: torch.Tensor, n: int) -> None:
    """sums (3, K) += (mean loss x n, correct, n) of a batch of n images per member (K = 1:
    one run). Three small in-place ops on the device: no host sync, no per-step allocation
    of metric objects (torchmetrics' update cost ~0.1 ms a step on a CPU, more than the
    arithmetic of a logistic regression's step)."""
    with torch.no_grad():
        sums[0].add_(losses.detach(), alpha=n)
        sums[1].add_(correct)
        sums[2].add_(n)


def add_votes(votes: torch.Tensor, predicted: torch.Tensor) -> None:
    """votes (K, classes) += how many images of the batch each member predicted as each
    class; predicted (K, B). scatter_add_, not bincount: bincount sizes its output from the
    data, a host sync on a GPU."""
    with torch.no_grad():
        votes.scatter_add_(1, predicted, torch.ones_like(predicted, dtype=votes.dtype))


def top_class_fracs(votes: torch.Tensor) -> list[dict[str, float]]:
    """Each member's {test_top_class_frac}: the share of test images predicted as its
    most-predicted class (1.0: one class for every image, a net that does not tell images
    apart), then zeroed; {} for a member with no test batch this epoch."""
    counts = votes.double().tolist()
    votes.zero_()
    return [{"test_top_class_frac": max(c) / sum(c)} if sum(c) else {} for c in counts]


def means(sums: torch.Tensor, split: str) -> list[dict[str, float]]:
    """Each member's {split_loss, split_acc} from its sums (one host sync), then zeroed.
    Loss: the mean over the split's images (a NaN or inf loss reaches it: how a diverged run
    is detected); accuracy: correct / images, counted exactly."""
    loss, correct, n = sums.double().tolist()
    sums.zero_()
    return [
        {f"{split}_loss": loss[k] / n[k], f"{split}_acc": correct[k] / n[k]} if n[k] else {}
        for k in range(len(n))
    ]


AUTOMATIC = "epoch_loop.automatic_optimization.optim_progress"
MANUAL = "epoch_loop.manual_optimization.optim_step_progress"


def count_steps_manually(checkpoint: dict) -> None:
    """A checkpoint of the older format, written while Lightning's automatic optimization
    stepped (a run may be resumed long after): its optimizer steps (the run's global step)
    are counted where a manual one's are, so the run resumes at its step, not at 0 (this
    runs before Lightning restores its loops from the checkpoint)."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    counted = loops.get(AUTOMATIC, {}).get("optimizer", {}).get("step")
    if counted and not loops.get(MANUAL, {}).get("total", {}).get("completed"):
        loops[MANUAL] = {"total": dict(counted["total"]), "current": dict(counted["current"])}


class SummingModule(L.LightningModule):
    """What a run's Classifier and a stack's StackedClassifier share: `net`, the optimizer
    factory (params -> torch.optim.Optimizer, e.g. a Hydra partial), the epoch's sums of its
    k runs as (3, k) buffers (add_batch), and the train sums in every checkpoint: a run
    resumed from one saved inside an epoch (checkpoint_every_min) reports the whole epoch's
    mean, not the mean of its rest. Subclasses define `_step(batch, split)`."""

    def __init__(self, net: nn.Module, k: int, optimizer, num_classes: int):
        super().__init__()
        self.net, self.optimizer_factory = net, optimizer
        # The step is ours (training_step): Lightning's automatic optimization wraps it in a
        # closure and a chain of hooks, a large share of a small model's step on a GPU
        # (benchmarks/bench.py --floor times a no-op model's loop both ways). The
        # hooks callbacks use (on_before_backward, on_after_backward,
        # on_before_optimizer_step, on_train_batch_*) still run.
        self.automatic_optimization = False
        for split in ("train", "test"):  # loss x images, correct, images (add_batch)
            self.register_buffer(f"{split}_sums", torch.zeros(3, k), persistent=False)
        # test predictions per class (add_votes): whether a run predicts one class for all
        self.register_buffer("test_votes", torch.zeros(k, num_classes), persistent=False)

    def __setattr__(self, name, value):
        # Lightning sets _current_fx_name before and after each of the ~20 hooks it calls a
        # step; torch's Module.__setattr__ first looks for a parameter, buffer or module of
        # that name (1.3 us a call on the CPU, against 0.1 us for this plain attribute). In
        # Lightning 2.6 it is a plain attribute; were it ever a property, this would skip it
        if name == "_current_fx_name":
            self.__dict__[name] = value
        else:
            super().__setattr__(name, value)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        # one optimizer step, in the order of Lightning's automatic optimization, which also
        # ran the backward and the step outside the precision's autocast (Lightning runs all
        # of training_step inside it)
        optimizer = self.optimizers()
        loss = self._step(batch, "train")
        with torch.autocast(self.device.type, enabled=False):
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss

    def validation_step(self, batch, batch_idx):
        # The validation loop runs on the test split: the paper's per-epoch test accuracy.
        self._step(batch, "test")

    def on_save_checkpoint(self, checkpoint):
        checkpoint["epoch_sums"] = {"train": self.train_sums.detach().cpu().clone()}

    def on_load_checkpoint(self, checkpoint):
        if "epoch_sums" in checkpoint:
            self.train_sums.copy_(checkpoint["epoch_sums"]["train"])
        count_steps_manually(checkpoint)
        # torch's load_state_dict takes fused/foreach from the saved groups: a run resumed
        # with another speed.fused_optimizer steps as it is configured now
        states = checkpoint.get("optimizer_states") or []
        flags = self._optimizer_kind() if states else {}
        for state in states:
            for group in state.get("param_groups", []):
                group.update({k: v for k, v in flags.items() if k in group})

    def _optimizer_kind(self) -> dict:
        """fused/foreach of this run's optimizer (built on a throwaway parameter: Lightning
        restores the checkpoint before it builds the optimizer)."""
        built = self.optimizer_factory([nn.Parameter(torch.zeros(1))])
        return {k: built.defaults[k] for k in ("fused", "foreach") if k in built.defaults}

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())


class Classifier(SummingModule):
    def __init__(self, net: nn.Module, num_classes: int, optimizer):
        super().__init__(net, 1, optimizer, num_classes)

    def _step(self, batch, split):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        predicted = logits.argmax(1)
        add_batch(getattr(self, f"{split}_sums"), loss, (predicted == y).sum(), len(y))
        if split == "test":
            add_votes(self.test_votes, predicted.unsqueeze(0))
        return loss

    def epoch_metrics(self) -> dict[str, float]:
        """Train and test loss/accuracy of the epoch just finished (summed over the ranks of
        a DDP run: every rank calls this at the same point), then reset for the next one."""
        out = {}
        for split in ("train", "test"):
            sums = getattr(self, f"{split}_sums")
            trainer = self._trainer
            if trainer is not None and trainer.world_size > 1:
                sums.copy_(trainer.strategy.reduce(sums, reduce_op="sum"))
            out.update(means(sums, split)[0])
        if self._trainer is not None and self._trainer.world_size > 1:
            self.test_votes.copy_(self._trainer.strategy.reduce(self.test_votes, reduce_op="sum"))
        out.update(top_class_fracs(self.test_votes)[0])
        return out

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        if "epoch_sums" not in checkpoint and "epoch_metrics" in checkpoint:
            # the older format's sums, kept by torchmetrics: MeanMetric's mean_value = sum of
            # loss x images, weight = images; micro accuracy's tp = correct
            saved = checkpoint["epoch_metrics"]
            loss, acc = saved["train_loss"]["state"], saved["train_acc"]["state"]
            self.train_sums.copy_(
                torch.tensor(
                    [[float(loss["mean_value"])], [float(acc["tp"].sum())], [float(loss["weight"])]]
                )
            )

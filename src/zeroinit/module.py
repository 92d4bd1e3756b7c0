"""The LightningModule: cross-entropy classification of any `net`, metrics via torchmetrics.

Metrics accumulate on the device (no host sync per step) and are read once per epoch by
`epoch_metrics()`; what gets logged and written is the job of callbacks (results.py).
"""
import lightning as L
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy


class Classifier(L.LightningModule):
    def __init__(self, net: nn.Module, num_classes: int, optimizer):
        """`optimizer` is a factory (params -> torch.optim.Optimizer), e.g. a Hydra partial."""
        super().__init__()
        self.net = net
        self.optimizer_factory = optimizer
        # nan_strategy="disable": a NaN loss must reach the epoch mean (that is how a
        # diverged run is detected) and the check would cost a host sync every step.
        self.metrics = nn.ModuleDict({
            f"{split}_{kind}": (MeanMetric(nan_strategy="disable") if kind == "loss" else
                                MulticlassAccuracy(num_classes, average="micro",
                                                   validate_args=False))
            for split in ("train", "test") for kind in ("loss", "acc")
        })

    def forward(self, x):
        return self.net(x)

    def _step(self, batch, split):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.metrics[f"{split}_loss"].update(loss.detach(), len(y))
        self.metrics[f"{split}_acc"].update(logits.detach(), y)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        # The validation loop runs on the test split: the paper's per-epoch test accuracy.
        self._step(batch, "test")

    def epoch_metrics(self) -> dict[str, float]:
        """Train and test loss/accuracy of the epoch just finished (synced across ranks),
        then reset for the next one."""
        out = {}
        for key, metric in self.metrics.items():
            if metric.update_count:
                out[key] = float(metric.compute())
            metric.reset()
        return out

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

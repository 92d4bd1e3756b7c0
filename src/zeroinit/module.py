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
        self.metrics = nn.ModuleDict(
            {
                f"{split}_{kind}": (
                    MeanMetric(nan_strategy="disable")
                    if kind == "loss"
                    else MulticlassAccuracy(num_classes, average="micro", validate_args=False)
                )
                for split in ("train", "test")
                for kind in ("loss", "acc")
            }
        )

    def forward(self, x):
        return self.net(x)

    def _step(self, batch, split):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        # The batch's mean, once per image: the epoch's loss is the mean over its images, as
        # the stacked members' is. (MeanMetric's `weight` argument is ignored with
        # nan_strategy="disable" in torchmetrics 1.9: the last, smaller batch counted as
        # much as a full one and train_loss differed from a stacked member's by ~1%.)
        self.metrics[f"{split}_loss"].update(loss.detach().expand(len(y)))
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

    # A checkpoint saved inside an epoch (checkpoint_every_min) holds the epoch's running train
    # metrics, so a run resumed there reports the whole epoch's mean, not the mean of its rest.
    # (torchmetrics keeps metric states out of the state_dict.)
    def on_save_checkpoint(self, checkpoint):
        checkpoint["epoch_metrics"] = {
            key: {"state": dict(m.metric_state), "updates": m.update_count}
            for key, m in self.metrics.items()
            if key.startswith("train")
        }

    def on_load_checkpoint(self, checkpoint):
        for key, saved in checkpoint.get("epoch_metrics", {}).items():
            metric = self.metrics[key]
            for name, value in saved["state"].items():
                setattr(metric, name, value)
            metric._update_count = saved["updates"]
            metric._computed = None

    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

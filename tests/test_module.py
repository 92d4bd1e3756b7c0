"""The LightningModule: its optimizer, built from conf/optimizer as train.py builds it, and
the epoch's loss and accuracy sums (module.add_batch / means), kept in checkpoints."""

import pytest
import torch

from zeroinit.config import build
from zeroinit.module import Classifier, add_batch, add_votes, means, top_class_fracs
from zeroinit.run import run
from zeroinit.stacked.members import combine_checkpoints


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([], {"lr": 1e-3, "eps": 1e-8, "betas": (0.9, 0.999)}),  # the paper's Adam
        (
            ["optimizer.eps=1e-3", "optimizer.betas=[0.8,0.99]", "optimizer.lr=3e-4"],
            {"lr": 3e-4, "eps": 1e-3, "betas": (0.8, 0.99)},
        ),
        (
            ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.lr=0.1"],
            {"lr": 0.1, "momentum": 0.9},
        ),
    ],
)
def test_optimizer_arguments_from_the_command_line(make_cfg, overrides, expected):
    cfg = make_cfg(*overrides)
    module = Classifier(torch.nn.Linear(3, 2), 2, optimizer=build(cfg.optimizer))
    group = module.configure_optimizers().param_groups[0]
    assert {k: tuple(group[k]) if k == "betas" else group[k] for k in expected} == expected


def test_epoch_sums_give_the_mean_over_images_and_exact_accuracy():
    sums = torch.zeros(3, 2)  # two members
    add_batch(sums, torch.tensor([1.0, 2.0]), torch.tensor([3, 0]), 4)
    add_batch(
        sums, torch.tensor([4.0, float("nan")]), torch.tensor([1, 1]), 2
    )  # a last, short batch
    first, second = means(sums, "train")
    assert first == {"train_loss": (4 * 1.0 + 2 * 4.0) / 6, "train_acc": 4 / 6}
    assert second["train_loss"] != second["train_loss"]  # NaN reaches the mean: diverged
    assert second["train_acc"] == 1 / 6 and not sums.any()  # read, then zeroed
    assert means(sums, "test") == [{}, {}]  # no batch this epoch: nothing to report


def test_epoch_sums_in_older_checkpoints_written_by_torchmetrics_are_read():
    module = Classifier(torch.nn.Linear(3, 2), 2, optimizer=None)
    module.on_load_checkpoint(
        {
            "epoch_metrics": {  # MeanMetric and MulticlassAccuracy(average="micro") states
                "train_loss": {
                    "state": {"mean_value": torch.tensor(6.0), "weight": torch.tensor(4.0)},
                    "updates": 2,
                },
                "train_acc": {
                    "state": {
                        "tp": torch.tensor([3]),
                        "fp": torch.tensor([1]),
                        "tn": torch.tensor([3]),
                        "fn": torch.tensor([1]),
                    },
                    "updates": 2,
                },
            }
        }
    )
    assert module.epoch_metrics() == {"train_loss": 1.5, "train_acc": 0.75}
    saved = {}
    add_batch(module.train_sums, torch.tensor(2.0), torch.tensor(1), 2)
    module.on_save_checkpoint(saved)
    other = Classifier(torch.nn.Linear(3, 2), 2, optimizer=None)
    other.on_load_checkpoint(saved)
    assert other.epoch_metrics() == {"train_loss": 2.0, "train_acc": 0.5}


def test_a_stack_resumes_with_each_members_running_sums():
    def member(loss_sum):
        return {
            "state_dict": {},
            "optimizer_states": [{"state": {}, "param_groups": []}],
            "epoch_sums": {"train": torch.tensor([[loss_sum], [1.0], [2.0]])},
        }

    combined = combine_checkpoints([member(3.0), member(5.0)])
    assert combined["epoch_sums"]["train"].tolist() == [[3.0, 5.0], [1.0, 1.0], [2.0, 2.0]]
    older = member(7.0)
    del older["epoch_sums"]  # a member checkpoint from before the sums were kept
    assert "epoch_sums" not in combine_checkpoints([member(3.0), older])


def test_epoch_sums_agree_with_torchmetrics():
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    g = torch.Generator().manual_seed(0)
    sums, mean, acc = torch.zeros(3, 1), MeanMetric(), MulticlassAccuracy(10, average="micro")
    for n in (128, 128, 37):  # a short last batch
        logits, y = torch.randn(n, 10, generator=g), torch.randint(0, 10, (n,), generator=g)
        loss = torch.nn.functional.cross_entropy(logits, y)
        add_batch(sums, loss, (logits.argmax(1) == y).sum(), n)
        mean.update(loss, weight=n)
        acc.update(logits, y)
    (got,) = means(sums, "test")
    assert got["test_loss"] == pytest.approx(float(mean.compute()), rel=1e-6)
    assert got["test_acc"] == pytest.approx(float(acc.compute()), abs=1e-7)


def test_the_share_of_the_most_predicted_class_per_member():
    votes = torch.zeros(3, 4)
    add_votes(votes, torch.tensor([[0, 0, 1], [2, 2, 2], [0, 1, 2]]))
    add_votes(votes, torch.tensor([[0, 3, 3], [2, 2, 2], [3, 3, 3]]))
    got = top_class_fracs(votes)
    assert [g["test_top_class_frac"] for g in got] == pytest.approx([3 / 6, 1.0, 3 / 6])
    assert not votes.any()  # zeroed for the next epoch
    assert top_class_fracs(votes) == [{}, {}, {}]  # no test batch: nothing to report


def test_a_run_that_predicts_one_class_for_every_image_says_so(make_cfg):
    """All-zero weights and biases: every image gets the same logits, hence one class; the
    usual init tells images apart. Each epoch records its step and the run its classes."""
    frozen = run(make_cfg("init=zero", "trainer.max_epochs=2", "callbacks.diagnostics=null"))
    assert [e["test_top_class_frac"] for e in frozen["epochs"]] == [1.0, 1.0]
    assert [e["step"] for e in frozen["epochs"]] == [32, 64]  # 4,000 digits, batches of 128
    assert frozen["num_classes"] == 10
    usual = run(make_cfg("trainer.max_epochs=1", "callbacks.diagnostics=null", "seed=1"))
    assert usual["epochs"][0]["test_top_class_frac"] < 0.2

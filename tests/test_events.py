"""zeroinit.events: a run's TensorBoard events hold each epoch and step once after every way a
run comes back (resumed from an older checkpoint, started over without one, started over
from an unreadable one). Read back raw, file by file, as the events were written."""

import json
import shutil
from pathlib import Path

import lightning as L

from zeroinit.events import keep


class KeepFirstCheckpoint(L.Callback):
    """Copies checkpoints/last.ckpt at the start of epoch 2: the epoch-1 checkpoint, for a
    test to put back as if the run had been killed before epoch 2's checkpoint."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            ckpt = Path(trainer.callbacks[-1].path)
            shutil.copy(ckpt, ckpt.with_name("epoch1.ckpt"))


def steps(run_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, list[int]] = {}
    for path in sorted(run_dir.glob("*tfevents*")):  # what TensorBoard reads
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                out.setdefault(value.tag, []).append(event.step)
    return out


def run_dir_of(log_dir: Path) -> Path:
    (results,) = log_dir.rglob("results.json")
    return results.parent


def mark_running(run_dir: Path) -> None:
    results = json.loads((run_dir / "results.json").read_text())
    results["status"] = "running"  # as a killed run leaves it
    (run_dir / "results.json").write_text(json.dumps(results))


ARGS = ["-m", "seed=0", "+trainer.limit_train_batches=3", "checkpoint_every_min=0"]


def accumulated(run_dir: Path) -> dict[str, list[int]]:
    """Steps of each scalar as EventAccumulator.Scalars() lists them (the API users script
    against; it lists simple_value scalars, not tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_each_step_once(run_dir: Path, epochs: int):
    got = steps(run_dir)
    assert got["test/acc"] == list(range(1, epochs + 1)), got["test/acc"]
    scalars = accumulated(run_dir)
    assert scalars["test/acc"] == list(range(1, epochs + 1)), scalars["test/acc"]
    for tag in ("train/loss", "test/loss"):
        assert scalars[tag] == got[tag], tag
    assert all(scalars[tag] == got[tag] for tag in scalars)  # diagnostics' steps too
    for tag, seen in got.items():
        assert len(seen) == len(set(seen)), (tag, seen)  # diagnostics' steps too
    assert got["_hparams_/session_start_info"] == [0]  # one HPARAMS session


def test_resumed_from_an_older_checkpoint_each_epoch_and_step_once(tmp_path, here):
    args = [
        *ARGS,
        "trainer.max_epochs=3",
        f"paths.log_dir={tmp_path}",
        "+callbacks.keep._target_=test_events.KeepFirstCheckpoint",
    ]
    assert here("train.py", *args).returncode == 0
    run_dir = run_dir_of(tmp_path)
    ckpts = run_dir / "checkpoints"
    # killed after epoch 3's line, before its checkpoint: the checkpoint is epoch 1's
    shutil.copy(ckpts / "epoch1.ckpt", ckpts / "last.ckpt")
    mark_running(run_dir)
    out = here("train.py", *args)
    assert out.returncode == 0 and "resuming" in out.stdout, out.stderr[-2000:]
    assert_each_step_once(run_dir, 3)
    assert not list(run_dir.glob("*set-aside*"))  # rewritten, not set aside


def test_started_over_the_earlier_events_are_set_aside(tmp_path, here):
    args = [*ARGS, "trainer.max_epochs=2", f"paths.log_dir={tmp_path}"]
    assert here("train.py", *args).returncode == 0
    run_dir = run_dir_of(tmp_path)
    # killed after an epoch's line, before any checkpoint: it starts over
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    mark_running(run_dir)
    assert here("train.py", *args).returncode == 0
    assert_each_step_once(run_dir, 2)
    assert len(list(run_dir.glob("*set-aside-events*"))) == 1  # kept, not deleted


def test_an_unreadable_checkpoint_sets_its_events_aside_with_it(tmp_path, here):
    args = [*ARGS, "trainer.max_epochs=2", f"paths.log_dir={tmp_path}"]
    assert here("train.py", *args).returncode == 0
    run_dir = run_dir_of(tmp_path)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"torn")
    mark_running(run_dir)
    out = here("train.py", *args)
    assert out.returncode == 0 and "unreadable checkpoint" in out.stdout
    assert_each_step_once(run_dir, 2)
    assert len(list(run_dir.glob("*set-aside-events*"))) == 1


def test_what_a_checkpoint_covers_is_kept():
    assert keep("test/acc", 2, epochs=2, steps=64)
    assert not keep("test/acc", 3, epochs=2, steps=64)
    assert keep("weight_gradients/norm/x", 64, epochs=2, steps=64)  # counted in steps
    assert not keep("weight_gradients/norm/x", 65, epochs=2, steps=64)
    assert not keep("_hparams_/session_start_info", 0, epochs=2, steps=64)  # written again
    assert not keep("config/text_summary", 0, epochs=2, steps=64)

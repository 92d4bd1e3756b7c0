"""zeroinit.stacked.plan: stacks as equal as the cap allows, every place busy, the work
balanced; and a sweep over 2 CPU workers that trains run for run as over 1."""

import json
from pathlib import Path

import pytest

from zeroinit.stacked.plan import assign, split, spread


@pytest.mark.parametrize(
    "n, cap, sizes",
    [
        (15, 4, [4, 4, 4, 3]),
        (10, 4, [4, 3, 3]),
        (15, 15, [15]),
        (15, 64, [15]),
        (3, 1, [1, 1, 1]),
        (1, 4, [1]),
        (0, 4, []),
    ],
)
def test_split_cuts_at_the_cap_into_near_equal_parts(n, cap, sizes):
    parts = split(list(range(n)), cap)
    assert [len(p) for p in parts] == sizes
    assert [x for p in parts for x in p] == list(range(n))  # the sweep's order kept


def test_thirty_runs_on_four_gpus_are_four_stacks_at_once():
    schedule = assign(spread(split(list(range(30)), 64), 4), 4)
    assert sorted(len(stacks) for stacks in schedule) == [1, 1, 1, 1]
    assert sorted(len(s) for stacks in schedule for s in stacks) == [7, 7, 8, 8]


def test_more_stacks_than_places_are_balanced_and_single_runs_fill_in():
    stacks = split(list(range(15)), 4) + [["a"], ["b"], ["c"]]  # 4/4/4/3 + 3 lone runs
    schedule = assign(spread(stacks, 2), 2)
    loads = [sum(len(s) for s in stacks) for stacks in schedule]
    assert sorted(loads) == [9, 9]
    assert sorted(
        x for stacks in schedule for s in stacks for x in s if isinstance(x, int)
    ) == list(range(15))


def test_spread_stops_at_single_runs():
    assert spread([[1, 2]], 4) == [[1], [2]]
    assert spread([[1]], 4) == [[1]]
    assert assign([[1]], 3) == [[[1]], [], []]


def test_two_cpu_workers_train_run_for_run_as_one(tmp_path, here):
    args = [
        "-m",
        "init=zero,bias_normal",
        "seed=0,1",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=4",
        "callbacks.diagnostics=null",
        "launcher=stacked",
        "hydra.launcher.stack_size=2",
    ]
    two = here("train.py", *args, "hydra.launcher.workers=2", f"paths.log_dir={tmp_path / 'a'}")
    assert two.returncode == 0, two.stderr[-2000:]
    assert "stacked: 4 runs on 2 places at once: 2, 2" in two.stdout
    assert "sweep: 4 runs: 4 completed" in two.stdout
    one = here("train.py", *args, f"paths.log_dir={tmp_path / 'b'}")
    assert one.returncode == 0, one.stderr[-2000:]
    runs = sorted(p.parent.name for p in (tmp_path / "b").rglob("results.json"))
    assert len(runs) == 4
    for name in runs:
        a, b = (
            json.loads(next((tmp_path / x).rglob(f"{name}/results.json")).read_text()) for x in "ab"
        )
        assert a["status"] == b["status"] == "completed" and a["stack_size"] == 2
        for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
            for key in ("test_acc", "test_loss", "train_loss", "train_acc"):
                assert ea[key] == pytest.approx(eb[key], rel=1e-5, abs=1e-6), (name, key)


def test_a_bad_workers_value_is_one_line(tmp_path, here):
    out = here(
        "train.py",
        "-m",
        "seed=0,1",
        "launcher=stacked",
        "hydra.launcher.workers=0",
        f"paths.log_dir={tmp_path}",
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: hydra.launcher.workers: 0 ")


def test_a_stop_signal_to_the_sweep_alone_stops_every_place_and_a_rerun_resumes(tmp_path, here):
    # `kill <pid>` (or a scheduler) signals the process that started the sweep, not its
    # workers: it passes the signal on, every stack stops at a batch boundary, and the sweep
    # ends with its summary and 128 + the signal, leaving no worker behind.
    import sys
    import time

    from test_signals import terminate_when
    from zeroinit.signals import child_processes

    args = [
        "-m", "seed=0,1,2,3", "launcher=stacked", "hydra.launcher.stack_size=2",
        "hydra.launcher.workers=2", "trainer.max_epochs=40", "callbacks.diagnostics=null",
        f"paths.log_dir={tmp_path}",
    ]  # fmt: skip
    sweep = tmp_path / "sweeps" / "default"
    workers = []

    def ready(proc):  # every member has checkpointed an epoch: note the workers, then signal
        if len(list(sweep.glob("*/checkpoints/last.ckpt"))) < 4:
            return False
        workers.extend(child_processes("LokyProcess", parent=proc.pid))
        return True

    done, stdout, stderr = terminate_when([sys.executable, "src/train.py", *args], ready)
    assert workers, "never signalled"
    assert done.returncode == 143, stderr[-2000:]
    assert "sweep: 4 runs: 4 interrupted" in stdout, stdout[-2000:]
    for r in sweep.glob("*/results.json"):
        assert json.loads(r.read_text())["status"] == "interrupted"
    time.sleep(1)
    alive = [pid for pid in workers if _state(pid) not in ("", "Z")]
    assert not alive, f"workers {alive} kept running"
    again = here("train.py", *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "4 of them resumed" in again.stdout


def _state(pid: int) -> str:
    """A process's state letter ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""

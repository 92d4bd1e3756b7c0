"""Inside an epoch, training reads nothing back from the device: on a GPU every read
(`.item()`, `.tolist()`, `bool(t)`, a copy to or from the host) waits for all the kernels
queued before it, and a run of small steps then goes at the pace of those round trips instead
of the GPU's. Checked on the CPU, where nothing waits, by counting the calls that would: a run
of 15 steps must make exactly as many as the same run of 9 (what the diagnostics read at their
measured steps, the epoch's metrics and results.json are the same in both), so no step makes
one of its own. Single runs and stacks, with the default callbacks (diagnostics on)."""

import collections
import traceback

import torch
from torch.overrides import TorchFunctionMode

from test_stacked import member_cfgs
from zeroinit.run import run
from zeroinit.stacked.group import train_group

T = torch.Tensor
READS = {  # what makes the host wait for the device on a GPU
    T.item,
    T.tolist,
    T.__bool__,
    T.__int__,
    T.__float__,
    T.__index__,
    T.numpy,
    T.cpu,
    T.cuda,
    T.nonzero,
    torch.nonzero,
    T.masked_select,
    torch.masked_select,
    T.unique,
    torch.unique,
}


class HostReads(TorchFunctionMode):
    """Counts READS, boolean-mask indexing (its result's size is data) and `.to(<device>)`
    (a copy between host and device) by where they are called from."""

    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._reads(func, args, kwargs):
            frames = traceback.extract_stack(limit=6)[:-1]
            # Adam and its kin keep their step counters on the host (capturable=False):
            # reading those waits for nothing. And a symmetry measurement's distinct_units
            # reads back only where some units share a direction: how often depends on the
            # weights, not on the steps (it runs at the measured steps alone)
            if not any("/torch/optim/" in f.filename or f.name == "distinct_units" for f in frames):
                where = " <- ".join(
                    f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames)
                )
                self.calls[f"{getattr(func, '__name__', func)} at {where}"] += 1
        return func(*args, **kwargs)

    @staticmethod
    def _reads(func, args, kwargs):
        if func in READS:
            return True
        if func is T.__getitem__:
            index = args[1] if len(args) > 1 else None
            index = index if isinstance(index, tuple) else (index,)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        if func is T.to:
            return any(isinstance(a, (str, torch.device)) for a in (*args[1:], *kwargs.values()))
        return False


def reads_of(train, steps: int) -> collections.Counter:
    mode = HostReads()
    with mode:
        train(steps)
    return mode.calls


def assert_no_reads_per_step(train):
    short, long = reads_of(train, 9), reads_of(train, 15)
    assert sum(short.values()) > 0  # the counter sees the reads an epoch does make
    extra = {k: long[k] - short.get(k, 0) for k in long if long[k] != short.get(k, 0)}
    assert not extra, f"reads that grow with the steps (15 steps vs 9): {extra}"


def test_a_run_reads_nothing_back_per_step(make_cfg):
    def train(steps):
        cfg = make_cfg("init=zero", "trainer.max_epochs=1", f"+trainer.limit_train_batches={steps}")
        assert run(cfg)["status"] == "completed"

    assert_no_reads_per_step(train)


def test_a_stack_reads_nothing_back_per_step(tmp_path):
    def train(steps):
        jobs = member_cfgs(
            tmp_path / str(steps),
            "trainer.max_epochs=1",
            f"+trainer.limit_train_batches={steps}",
            members=[("zero", 0), ("bias_normal", 1)],
        )
        outcomes = train_group(jobs, stack_size=2)
        assert [o for o, _, _ in outcomes] == ["completed", "completed"]

    assert_no_reads_per_step(train)

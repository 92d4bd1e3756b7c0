"""GPU slots: each concurrent run or stack of a machine gets a GPU of its own (or shares one
only as far as `runs_per_gpu` allows), through lock files every process of the machine
shares (joblib workers, stacked places, several sweeps)."""

import fcntl
import os
import time
from pathlib import Path


def slot_gpu(slot: int, n_gpus: int, runs_per_gpu: int = 1) -> int:
    """Slot k of n_gpus * runs_per_gpu slots -> its GPU. Slots fill GPU 0, 1, ... first, so
    with runs_per_gpu=1 no two concurrent runs share a GPU."""
    if not 0 <= slot < n_gpus * runs_per_gpu:
        raise ValueError(f"slot {slot} out of range for {n_gpus} GPUs x {runs_per_gpu}")
    return slot % n_gpus


class GpuSlot:
    """Claims one of n_gpus * runs_per_gpu slots by flock on files in `lock_dir` (shared by
    every process of the machine: joblib workers, several sweeps); waits while all are busy."""

    def __init__(self, n_gpus: int, runs_per_gpu: int = 1, lock_dir=None, poll_s: float = 1.0):
        if n_gpus < 1 or runs_per_gpu < 1:
            raise ValueError("n_gpus and runs_per_gpu must be >= 1")
        self.n_gpus, self.runs_per_gpu, self.poll_s = n_gpus, runs_per_gpu, poll_s
        self.lock_dir = Path(lock_dir or default_gpu_lock_dir())
        self.file = self.slot = self.index = None

    def acquire(self, timeout_s: float | None = None) -> int:
        """Block until a slot is free; return its GPU index."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        while True:
            for slot in range(self.n_gpus * self.runs_per_gpu):
                f = open(self.lock_dir / f"slot{slot}.lock", "a")
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    f.close()
                    continue
                self.file, self.slot = f, slot
                self.index = slot_gpu(slot, self.n_gpus, self.runs_per_gpu)
                return self.index
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise TimeoutError(f"no free GPU slot in {self.lock_dir} after {timeout_s}s")
            time.sleep(self.poll_s)

    def release(self):
        if self.file is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = self.slot = self.index = None


def default_gpu_lock_dir(env=os.environ) -> Path:
    """Shared by the processes of one machine, but per SLURM job: two jobs on one node each
    see their own GPUs as cuda:0.., so one machine-wide slot0.lock would make the second job
    wait for the first to end."""
    job = env.get("SLURM_JOB_ID")
    name = f"zeroinit-gpus-slurm{job}" if job else "zeroinit-gpus"
    return Path(env.get("TMPDIR", "/tmp")) / name


def ddp_worker() -> bool:
    """Whether this process is a DDP rank > 0 (Lightning's DDP launcher starts them as new
    processes of the script, LOCAL_RANK or NODE_RANK set): rank 0 writes and reports."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0

"""The timing harness behind benchmarks/: what bench.py, stacked_bench.py, gpu_bench.py and
gpu_check.py measure with, and the variants they compare (bench.py's docstring says what each
one is and how part-epochs are extrapolated).

  set-up        MODELS (name -> dataset, full epoch, overrides), compose_cfg, random data
  harness       sizes, schedule, extrapolate (fixed + per image x images), time_sizes, Fit
  variants      Case; time_project (src/train.py's objects), time_bare (a plain loop),
                time_conventional (Dataset + DataLoader + a default Lightning Trainer)
  bounds        epoch_flops, matmul_flops_per_s, loop_floor (Lightning's loop alone), profile
  commands      time_sweep (`python src/train.py -m ...` as a user types it), time_import
  machine       the line every result starts with
"""

import contextlib
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from zeroinit import speed
from zeroinit.config import build, build_model
from zeroinit.data import random_crop_flip
from zeroinit.results import cpu_model
from zeroinit.run import build_run, compose

ROOT = Path(__file__).resolve().parent.parent

# name -> (dataset config, train images, test images of a full epoch, config overrides)
MODELS = {
    "mnist_fnn": ("mnist", 60_000, 10_000, ["model=mnist_fnn"]),
    "mnist_cnn": ("mnist", 60_000, 10_000, ["model=mnist_cnn"]),
    "cifar_fnn": ("cifar10", 50_000, 10_000, ["model=cifar_fnn"]),
    "cifar_cnn": ("cifar10", 50_000, 10_000, ["model=cifar_cnn"]),
    # with the paper's normalization and crop + flip augmentation (Figure 11's preset)
    "resnet50": ("cifar10", 50_000, 10_000, ["experiment=fig11_resnet50"]),
    "logreg_mnist": ("mnist", 60_000, 10_000, ["model=logreg"]),
    "logreg_cifar": ("cifar10", 50_000, 10_000, ["model=logreg"]),
}
VARIANTS = ("project", "bare", "conventional")
# A full epoch of a conv net takes minutes on a CPU: time part of one, at these sizes and half
# of them, and extrapolate to a full epoch (see extrapolate()).
CPU_IMAGES = {"mnist_cnn": 10_000, "cifar_cnn": 5_000, "resnet50": 1_000}
# On a GPU (gpu_check, paper_time): train images per model, a part of an epoch timed at N and
# N/2 and extrapolated to a full one: enough steps that per-step costs dominate, few enough for
# `make gpu-check` to fit in minutes.
GPU_IMAGES = {
    "mnist_fnn": 25_600,
    "cifar_fnn": 25_600,
    "mnist_cnn": 12_800,
    "cifar_cnn": 12_800,
    "resnet50": 2_560,
    "logreg_mnist": 60_000,
    "logreg_cifar": 50_000,
}
DEFAULT_SWEEP = "init=zero,pytorch,bias_normal seed=0,1,2,3,4"


# ------------------------------------------------------------------------------------- set-up
def compose_cfg(model: str, device: str, out_dir, overrides=()):
    """The config `python src/train.py model=<model> dataset=<its dataset>` would run."""
    dataset, _, _, model_overrides = MODELS[model]
    return compose(
        *model_overrides,
        f"dataset={dataset}",
        "dataset.download=false",
        "trainer.max_epochs=1",
        f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
        f"paths.output_dir={out_dir}",
        f"paths.log_dir={out_dir}",
        *overrides,
    )


def random_split(shape, n, generator, device):
    x = torch.randint(0, 256, (n, *shape), generator=generator, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=generator)
    return x.to(device), y.to(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def silenced():
    """Progress bars, model summaries and per-epoch lines go nowhere (they still cost)."""
    logging.disable(logging.INFO)  # Lightning's model summary and start-up lines
    try:
        with (
            open(os.devnull, "w") as null,
            contextlib.redirect_stdout(null),
            contextlib.redirect_stderr(null),
        ):
            yield
    finally:
        logging.disable(logging.NOTSET)


# ------------------------------------------------------------ a part of an epoch -> a full one
class Fit(NamedTuple):
    """seconds = fixed + per_image * train images, and what that gives for a full epoch."""

    fixed: float | None  # seconds paid once per fit whatever its size; None: not separated
    per_image: float  # seconds per train image (its share of the test split included)
    estimate: float  # seconds of a full epoch
    fallback: str | None = None  # why plain scaling gave the estimate, if it did


def sizes(n: int, full: int) -> tuple:
    """Train images to time: a full epoch as it is; a part of one at n and n/2, because two
    sizes tell what a fit pays once (start-up, checkpoint, results) from what it pays per image,
    and scaling one size up would multiply the once-per-fit costs too."""
    return (n,) if n >= full or n < 2 else (n, n // 2)


def schedule(variants, images, repeats):
    """(repeat, images, variants in the order to time them): the variants' order rotates every
    repeat and every variant is timed at one size before the next size (the sizes' order
    alternating too), so that a drift of a shared machine's speed spreads over all of them."""
    variants, images = list(variants), list(images)
    for r in range(repeats):
        k = r % len(variants)
        for n in images if r % 2 == 0 else images[::-1]:
            yield r, n, variants[k:] + variants[:k]


def extrapolate(points, full: int) -> Fit:
    """Seconds of a full epoch of `full` train images from (train images, seconds) timings.

    The median at each size, then the least-squares line through those medians: its intercept
    is the cost paid once per fit, its slope the cost per image. One size only: the plain
    scaling t * full / n (no scaling when n is the full epoch). Where the line does not rise
    or crosses below zero at zero images, the noise is larger than what is measured, and the
    plain scaling of the largest size is used instead, with the reason in `fallback`.
    """
    by_size = {}
    for n, t in points:
        by_size.setdefault(n, []).append(t)
    med = {n: statistics.median(ts) for n, ts in by_size.items()}
    top = max(med)
    plain = Fit(None, med[top] / top, med[top] * full / top)
    if len(med) == 1:
        return plain if top == full else plain._replace(fallback="one size timed")
    mean_n, mean_t = statistics.fmean(med), statistics.fmean(med.values())
    per_image = sum((n - mean_n) * (t - mean_t) for n, t in med.items()) / sum(
        (n - mean_n) ** 2 for n in med
    )
    fixed = mean_t - per_image * mean_n
    if per_image <= 0:
        return plain._replace(fallback="noise: the time did not grow with the images")
    if fixed < 0:
        return plain._replace(fallback="noise: a negative fixed cost")
    return Fit(fixed, per_image, fixed + per_image * full)


def time_sizes(run, variants, images, repeats: int, full: int, label="", log=print):
    """Time every variant at every size in `schedule`'s order, `run(variant, n)` -> seconds;
    returns ({variant: [(train images, seconds)]}, {variant: Fit of a full epoch})."""
    times = {v: [] for v in variants}
    for r, n, order in schedule(variants, images, repeats):
        for v in order:
            times[v].append((n, run(v, n)))
            log(
                f"  {label}{v}, repeat {r + 1}/{repeats}, {n:,} train images: "
                f"{times[v][-1][1]:.2f}s",
                flush=True,
            )
    return times, {v: extrapolate(t, full) for v, t in times.items()}


def describe_fits(fits: dict, label="fixed per fit") -> str:
    """'fixed per fit: project 0.91 s, bare 0.02 s; plain scaling for ...' of {variant: Fit}."""
    fixed = [f"{v} {f.fixed:.2f} s" for v, f in fits.items() if f.fixed is not None]
    plain = [f"{v} ({f.fallback})" for v, f in fits.items() if f.fallback]
    return "; ".join(
        ([f"{label}: " + ", ".join(fixed)] if fixed else [])
        + (["plain scaling t x full/n for " + ", ".join(plain)] if plain else [])
    )


class Case:
    """One model's data and config, shared by every variant."""

    def __init__(self, model, device, n_train, work_dir, overrides=()):
        self.model, self.device = model, torch.device(device)
        dataset, full_train, full_test, _ = MODELS[model]
        self.full_train = full_train
        self.n_train = min(n_train or full_train, full_train)  # the largest size timed
        self.n_test = max(1, round(full_test * self.n_train / full_train))
        self.work_dir = Path(work_dir)
        self.overrides = list(overrides)
        self.cfg = compose_cfg(model, device, self.work_dir / "cfg", overrides)
        shape = tuple(self.cfg.dataset.input_shape)
        g = torch.Generator().manual_seed(0)
        self.train = random_split(shape, self.n_train, g, self.device)
        self.test = random_split(shape, self.n_test, g, self.device)
        self.runs = 0

    def net(self):
        torch.manual_seed(self.cfg.seed)
        net = build_model(self.cfg, self.cfg.dataset.input_shape, 10)
        return build(self.cfg.init).apply(net)


# ----------------------------------------------------------------------------- 1. the project
# Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes every Adam step
# without a GPU ~50 us slower (see zeroinit/speed.py). Each variant gets the setting it would
# have in a process of its own: the bare loop none, the Lightning pipelines Lightning's.
NVML = "PYTORCH_NVML_BASED_CUDA_CHECK"


def time_project(case: Case, n_train=None, extra=()) -> float:
    os.environ[NVML] = "1"  # as after `import lightning`; the project decides from there
    case.runs += 1
    out = case.work_dir / f"project{case.runs}"
    out.mkdir(parents=True)  # as Hydra makes a run's directory
    cfg = compose_cfg(case.model, case.device.type, out, [*case.overrides, *extra])
    data = build(cfg.dataset, batch_size=cfg.batch_size, seed=cfg.seed, name=cfg.dataset.name)
    # What the dataset's loader would return (ImageDataModule.load() keeps a loaded split);
    # already on the device, so setup()'s .to(device) is a no-op as after the first epoch.
    n = n_train or case.n_train
    data.train_set = tuple(t[:n] for t in case.train)
    data.test_set = tuple(t[: max(1, n * case.n_test // case.n_train)] for t in case.test)
    data.classes = [str(c) for c in range(10)]
    trainer, module, data, writer = build_run(cfg, data=data)
    with silenced():
        sync(case.device)
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        sync(case.device)
        elapsed = time.perf_counter() - start
    assert writer.results["status"] == "completed", writer.results.get("error")
    shutil.rmtree(out, ignore_errors=True)  # checkpoints add up (ResNet-50: ~0.3 GB a run)
    return elapsed


# --------------------------------------------------------------------------- 2. a bare loop
def time_bare(case: Case, n_train=None) -> float:
    os.environ.pop(NVML, None)  # no Lightning in a bare loop's process
    speed.configure(None)  # full fp32, whatever a `--also speed=...` run left behind
    cfg, device = case.cfg, case.device
    net = case.net().to(device)
    optimizer = build(cfg.optimizer)(net.parameters())
    n = n_train or case.n_train
    x, y = (t[:n] for t in case.train)
    xt, yt = (t[: max(1, n * case.n_test // case.n_train)] for t in case.test)
    norm = cfg.dataset.normalize
    mean = std = None
    if norm is not None:
        mean = torch.tensor(list(norm.mean), device=device).view(1, -1, 1, 1)
        std = torch.tensor(list(norm.std), device=device).view(1, -1, 1, 1)

    def prepare(xb, idx=None, offsets=None, flips=None):
        xb = xb.float().div_(255)  # the same ops as DeviceBatches
        if offsets is not None:
            xb = random_crop_flip(xb, offsets[idx], flips[idx])
        return xb if mean is None else (xb - mean) / std

    sync(device)
    start = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(n, generator=g).to(device)
    offsets = flips = None
    if cfg.dataset.augment:
        offsets = torch.randint(0, 9, (n, 2), generator=g).to(device)
        flips = (torch.rand(n, generator=g) < 0.5).to(device)
    sums = torch.zeros(4, device=device)  # train loss, train correct, test loss, test correct
    net.train()
    for i in range(0, n, cfg.batch_size):
        idx = order[i : i + cfg.batch_size]
        xb, yb = prepare(x.index_select(0, idx), idx, offsets, flips), y.index_select(0, idx)
        logits = net(xb)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums[0] += loss.detach() * len(yb)
        sums[1] += (logits.detach().argmax(1) == yb).sum()
    net.eval()
    with torch.no_grad():
        for i in range(0, len(xt), cfg.dataset.eval_batch_size):
            end = i + cfg.dataset.eval_batch_size
            xb, yb = prepare(xt[i:end]), yt[i:end]
            logits = net(xb)
            sums[2] += F.cross_entropy(logits, yb, reduction="sum")
            sums[3] += (logits.argmax(1) == yb).sum()
    sums.tolist()  # the epoch's figures reach the host, as a real loop would print them
    sync(device)
    return time.perf_counter() - start


# ------------------------------------------------------------------ 3. the conventional way
class PILImages(Dataset):
    """torchvision.datasets.MNIST / CIFAR10's __getitem__: a PIL image per sample, transformed."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        images = images.cpu()
        gray = images.shape[1] == 1
        # MNIST keeps a (N, H, W) uint8 tensor, CIFAR10 a (N, H, W, C) numpy array.
        self.data = images[:, 0] if gray else images.permute(0, 2, 3, 1).contiguous().numpy()
        self.targets = labels.cpu().tolist()
        self.mode = "L" if gray else None
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img, target = self.data[index], int(self.targets[index])
        img = Image.fromarray(img.numpy() if self.mode else img, mode=self.mode)
        return self.transform(img), target


class LitClassifier(L.LightningModule):
    """The LightningModule of the Lightning docs: log the loss each step, Accuracy per epoch."""

    def __init__(self, net, lr=1e-3, num_classes=10):
        super().__init__()
        self.net = net
        self.lr = lr
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.train_acc(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.val_acc(logits, y)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def conventional_transform(cfg):
    ops = []
    if cfg.dataset.augment:
        ops += [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
    ops.append(transforms.ToTensor())
    if cfg.dataset.normalize is not None:
        ops.append(
            transforms.Normalize(list(cfg.dataset.normalize.mean), list(cfg.dataset.normalize.std))
        )
    test_ops = ops[-2:] if cfg.dataset.normalize else ops[-1:]
    return transforms.Compose(ops), transforms.Compose(test_ops)


def time_conventional(case: Case, n_train=None, workers=0) -> float:
    os.environ[NVML] = "1"  # as `import lightning` leaves it
    speed.configure(None)
    os.environ[NVML] = "1"
    cfg = case.cfg
    n = n_train or case.n_train
    train_tf, test_tf = conventional_transform(cfg)
    train_set = PILImages(*(t[:n] for t in case.train), train_tf)
    n_test = max(1, n * case.n_test // case.n_train)
    test_set = PILImages(*(t[:n_test] for t in case.test), test_tf)
    pin = case.device.type == "cuda"
    train_loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin,
        persistent_workers=False,
    )
    test_loader = DataLoader(
        test_set, batch_size=cfg.dataset.eval_batch_size, num_workers=workers, pin_memory=pin
    )
    module = LitClassifier(case.net(), lr=cfg.optimizer.lr)
    case.runs += 1
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="gpu" if case.device.type == "cuda" else "cpu",
        devices=1,
        default_root_dir=case.work_dir / f"conventional{case.runs}",
    )
    with silenced():
        sync(case.device)
        start = time.perf_counter()
        trainer.fit(module, train_loader, test_loader)
        sync(case.device)
        elapsed = time.perf_counter() - start
    shutil.rmtree(trainer.default_root_dir, ignore_errors=True)
    return elapsed


# ------------------------------------------------------------------ 4. the arithmetic bound
def epoch_flops(case: Case) -> float:
    """Forward+backward FLOPs of one full training epoch plus the test forward passes."""
    cfg, device = case.cfg, case.device
    net = case.net().to(device)
    shape = tuple(cfg.dataset.input_shape)
    b, eb = cfg.batch_size, 64
    x = torch.rand(b, *shape, device=device)
    y = torch.zeros(b, dtype=torch.long, device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    train_per_image = counter.get_total_flops() / b
    net.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(torch.rand(eb, *shape, device=device))
    test_per_image = counter.get_total_flops() / eb
    _, n_train, n_test, _ = MODELS[case.model]
    return train_per_image * n_train + test_per_image * n_test


def matmul_flops_per_s(device: torch.device, n=None, repeats=5) -> float:
    """Best fp32 throughput of square matmuls on this device (TF32 off)."""
    speed.configure(None)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# ------------------------------------------------------------- Lightning's own cost per step
class _NoOp(L.LightningModule):
    """One scalar parameter and a one-element batch: all that is left is the loop itself."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.p * batch).sum()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters())


class _NoOpManual(_NoOp):
    """The same, stepping its optimizer itself as the project's module does (manual
    optimization: zero_grad, manual_backward, step in training_step)."""

    def __init__(self):
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        optimizer = self.optimizers()
        loss = (self.p * batch).sum()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()


class _NoOpBatches:
    def __init__(self, steps):
        self.steps, self.x = steps, torch.ones(1)

    def __len__(self):
        return self.steps

    def __iter__(self):
        return iter([self.x] * self.steps)


def loop_floor(steps=469, repeats=5) -> dict:
    """Microseconds per optimizer step of a training loop with (almost) nothing to compute:
    a bare loop, and a Lightning Trainer with no logger, checkpoint, progress bar or summary,
    with Lightning's automatic optimization and with the module stepping itself (manual, as
    the project's module does)."""

    def bare():
        os.environ.pop(NVML, None)
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.Adam([p])
        start = time.perf_counter()
        for batch in _NoOpBatches(steps):
            loss = (p * batch).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.perf_counter() - start

    def lightning(module=_NoOp):
        os.environ[NVML] = "1"
        speed.configure(None)  # as the project runs it (no NVML check per step)
        trainer = L.Trainer(
            max_epochs=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        with silenced():
            start = time.perf_counter()
            trainer.fit(module(), _NoOpBatches(steps))
            return time.perf_counter() - start

    bare(), lightning(), lightning(_NoOpManual)
    times = {"bare": [], "lightning": [], "lightning_manual": []}
    for _ in range(repeats):
        times["bare"].append(bare())
        times["lightning"].append(lightning())
        times["lightning_manual"].append(lightning(_NoOpManual))
    return {k: 1e6 * statistics.median(v) / steps for k, v in times.items()}


def profile(case: Case, top=12) -> str:
    """torch.profiler's table of one bare-loop epoch and one project epoch: where time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if case.device.type == "cuda" else []
    )
    out = []
    for name, fn in (("bare", lambda: time_bare(case)), ("project", lambda: time_project(case))):
        fn()  # warm
        with torch_profile(activities=activities) as prof:
            seconds = fn()
        out.append(
            f"\n{name} loop, {case.model}, one epoch ({seconds:.2f}s, profiled):\n"
            + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        )
    return "".join(out)


# ------------------------------------------------------------------------------------ sweep
def time_sweep(overrides: str, work_dir) -> dict:
    """`python src/train.py -m <overrides>` in a subprocess, as a user runs it: wall time from
    the command to its exit, Python/torch/Lightning imports and Hydra start-up included."""
    out = Path(work_dir) / "sweep"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "-m",
        *shlex.split(overrides),
        f"paths.log_dir={out}",
        "sweep_name=bench",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    results = [json.loads(p.read_text()) for p in sorted(out.rglob("results.json"))]
    run_walls = [r["wall_time_s"] for r in results]
    return {
        "command": "python src/train.py -m " + overrides,
        "runs": len(results),
        "wall_s": wall,
        "runs_per_min": 60 * len(results) / wall,
        "median_run_s": statistics.median(run_walls) if run_walls else float("nan"),
        "run_s": [round(t, 2) for t in run_walls],
        "outside_runs_s": wall - sum(run_walls),
        "statuses": sorted({r["status"] for r in results}),
    }


def time_import() -> float:
    """What a fresh process pays before its first run: `import train` (torch, Lightning, Hydra)."""
    cmd = [sys.executable, "-c", "import sys; sys.path.insert(0, 'src'); import train"]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------- main
def machine() -> str:
    cpu = f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}{gpu}\npython {platform.python_version()}, torch {torch.__version__}, "
        f"lightning {L.__version__}, torchmetrics {torchmetrics.__version__}, "
        f"torchvision {torchvision.__version__}"
    )

"""How many runs one stack holds: at most what fits in memory, and among that what trains the
most runs per second on this device, measured.

Stacking is not always faster. On a GPU a stack of conv nets runs grouped convolutions, which
can be slower than K separate ones; on a CPU, K members' weights and Adam state can outgrow the
caches so that every step streams them from memory (15 cifar_fnn runs stacked took 1.24x as
long as one at a time on the 2-core development machine). So `stack_size: auto` (the default)
times a few optimizer steps of the real model, on random data of the real shape, at stack
sizes 1, 2, 4, ... up to the cap, twice in turn, and takes the size with the best runs per
second, 1 included (among sizes within `MIN_GAIN` of the best, the largest: it also pays
the fewest fit start-ups). One line says what it chose:

    stacked: cifar_fnn on cpu: 4 runs per stack (1.9x one at a time); 15 runs -> 4 stacks

The timings are kept in the user's cache folder (zeroinit.cache), keyed by everything that
sets the cost of a step (model config, input shape, classes, batch size, precision, speed
settings but compile, optimizer, device, torch version, threads): a new model or device
measures again, the same sweep tomorrow does not. `hydra.launcher.stack_size=N` forces N
and measures nothing.

Lightning's loop, a fit's start-up and its epoch ends are paid once per stack, not once per
run, and the probe times the model's step alone: so it errs towards smaller stacks, never
towards a stack slower than one at a time. What it measured on the development machine:
docs/stacking.md.
"""

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zeroinit import cache, speed
from zeroinit.config import build, build_model
from zeroinit.data import image_folder_shape
from zeroinit.errors import UserError

log = logging.getLogger("zeroinit")
MAX_AUTO_STACK = 64  # beyond this a stack's first results arrive late for little more speed
MIN_GAIN = 1.05  # runs per second this close to the best count as equal (noise)
BUDGET_S = 8.0  # the probe stops growing the stack after this many seconds
TIMED_S = 0.25  # each size: steps until this much time has passed (at least 2 steps)
FILE = "stack-probe.json"


def resolve(setting, cfg, n: int, measure: bool = True) -> int:
    """The number of members per stack for `n` runs of one group: `setting` (an integer >= 1)
    forces it; `auto` (or None) takes what fits in memory and, with `measure`, what the probe
    finds fastest within it."""
    if setting not in (None, "auto"):
        check_setting(setting)
        return min(n, setting)
    cfg = with_data_shape(cfg)
    cap = largest(cfg, n)
    if cap == 1 or not measure or not cfg.dataset.get("input_shape"):
        return cap  # (an image folder whose first image could not be read)
    try:
        choice = probe(cfg, cap)
    except Exception as e:  # noqa: BLE001 - a bad model config: the run itself says so
        log.warning("stack probe failed (%s: %s); stacks of up to %d", type(e).__name__, e, cap)
        return cap
    size = choice["size"]
    stacks = -(-n // size)
    said = (
        f"{size} runs per stack ({choice['gain']:.1f}x one at a time)"
        if size > 1
        else f"1 run per stack (stacked: {choice['best_stacked']:.2f}x one at a time at best)"
    )
    print(
        f"stacked: {cfg.model.name} on {choice['device']}: {said}; {n} runs -> "
        f"{'one at a time' if size == 1 else f'{stacks} stack' + ('s' if stacks > 1 else '')}"
        f"{' (measured before)' if choice['cached'] else ''}",
        flush=True,
    )
    return size


def with_data_shape(cfg):
    """cfg, with an image folder's input shape and classes read from its first image where the
    config leaves them to the data (dataset.input_shape: null), so its stacks are measured."""
    import copy

    from omegaconf import open_dict

    if cfg.dataset.get("input_shape") or cfg.dataset.get("source") != "image_folder":
        return cfg
    found = image_folder_shape(cfg.dataset.data_dir)
    if found is None:
        return cfg
    cfg = copy.deepcopy(cfg)
    with open_dict(cfg):
        cfg.dataset.input_shape, cfg.dataset.num_classes = list(found[0]), found[1]
    return cfg


def largest(cfg, n: int) -> int:
    """The most members one stack of `n` runs may hold: what fits, at most MAX_AUTO_STACK."""
    return max(1, min(n, MAX_AUTO_STACK, memory_cap(cfg)))


def check_settings(stack_size, workers) -> None:
    """The stacked launchers' own values (hydra.launcher.stack_size, workers): a UserError
    naming the key. The sweep's preflight calls it before anything is written (Hydra writes
    multirun.yaml before it hands the launcher its jobs)."""
    check_setting(stack_size)
    check_workers(workers)


def _count_or_auto(key: str, setting, auto: str = "auto") -> None:
    if setting in (None, "auto"):
        return
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
        raise UserError(
            f"hydra.launcher.{key}: {setting!r} is not allowed; allowed: an integer >= 1, or {auto}"
        )


def check_workers(setting) -> None:
    _count_or_auto("workers", setting, "auto (one per GPU, else 1)")


def check_setting(setting) -> None:
    _count_or_auto("stack_size", setting)


# ------------------------------------------------------------------------- choosing a size
def candidate_sizes(cap: int) -> list[int]:
    """1, 2, 4, ... below `cap`, and `cap` itself."""
    sizes, k = [], 1
    while k < cap:
        sizes.append(k)
        k *= 2
    return sizes + [cap]


def best_size(seconds: dict[int, float]) -> int:
    """The largest size whose runs per second (k / seconds per step) are within MIN_GAIN of
    the best: equal within noise, a larger stack also pays fewer fit start-ups and epoch ends,
    which the probe does not time."""
    rate = {k: k / s for k, s in seconds.items()}
    top = max(rate.values())
    return max(k for k, r in rate.items() if r * MIN_GAIN >= top)


def measure(
    sizes: list[int], step_seconds, budget_s: float = BUDGET_S, rounds: int = 2
) -> dict[int, float]:
    """{size: seconds per step} for `sizes` in order, from `step_seconds(size)`. The first
    round stops at a size slower per run than the best so far by more than noise (larger ones
    would be slower still) or after `budget_s`; a size that looks slower is timed once more
    first (a burst of load on a shared machine would otherwise end the search for good).
    Later rounds time the same sizes again, in turn, and keep each size's fastest time (a
    shared machine only ever adds time)."""
    start, seconds = time.perf_counter(), {}

    def slower(k):
        return k / seconds[k] * MIN_GAIN < max(j / s for j, s in seconds.items())

    for k in sizes:
        seconds[k] = step_seconds(k)
        if slower(k) and time.perf_counter() - start <= budget_s:
            seconds[k] = min(seconds[k], step_seconds(k))
        if slower(k) or time.perf_counter() - start > budget_s:
            break
    for _ in range(rounds - 1):
        for k in seconds:
            if time.perf_counter() - start > budget_s:
                log.info("stack probe: budget of %.0f s spent", budget_s)
                return seconds
            seconds[k] = min(seconds[k], step_seconds(k))
    return seconds


# ------------------------------------------------------------------------ the real step
def device_for(cfg) -> torch.device:
    accelerator = str(cfg.trainer.get("accelerator"))
    if torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def step_timer(cfg, device: torch.device):
    """step_seconds(k): seconds of one training step (forward, loss, backward, optimizer) of
    a k-member stack of the run's model (k = 1: the plain network, one run alone), on random
    data of the run's shape and batch size."""
    from zeroinit.stacked.layers import stack_nets
    from zeroinit.stacked.module import member_losses

    probed = probed_speed(cfg)
    speed.configure(probed)  # TF32 and cuDNN autotuning as the runs will have them
    shape, classes = tuple(cfg.dataset.input_shape), int(cfg.dataset.num_classes)
    b = int(cfg.batch_size)
    precision = str(cfg.trainer.get("precision"))
    dtype = torch.float64 if precision.startswith("64") else torch.float32
    autocast = precision.startswith("bf16")

    def step_seconds(k: int) -> float:
        nets = [build(cfg.init).apply(build_model(cfg, shape, classes)) for _ in range(k)]
        # Size 1 is one run alone: the plain network, as a run trains it, not a stack of one.
        net = (nets[0] if k == 1 else stack_nets(nets)).to(device, dtype)
        # as the runs have it (never compiled: probed_speed)
        net = speed.prepare(net, probed if k == 1 else speed.for_stack(probed))
        optimizer = speed.optimizer(build(cfg.optimizer), probed)(net.parameters())
        g = torch.Generator().manual_seed(0)
        lead = (b,) if k == 1 else (k, b)
        x = torch.rand((*lead, *shape), generator=g).to(device, dtype)
        y = torch.randint(0, classes, lead, generator=g).to(device)

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits = net(x)  # the loss of Classifier and StackedClassifier
                loss = F.cross_entropy(logits, y) if k == 1 else member_losses(logits, y).sum()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)

        step()  # warm-up: first-call allocations, cuDNN's choice
        _sync(device)
        n, start = 0, time.perf_counter()
        while n < 2 or time.perf_counter() - start < TIMED_S:
            step()
            n += 1
            _sync(device)
        return (time.perf_counter() - start) / n

    return step_seconds


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    from zeroinit.results import describe_device

    return describe_device(device)


def probed_speed(cfg) -> dict:
    """The run's speed settings the probe applies (TF32, cuDNN autotuning, channels_last,
    the fused optimizer step).
    Not torch.compile: compiling each size would take longer than the sweep's first epochs,
    so a compiled sweep's stacks are sized by the eager step."""
    return {**speed.settings_of(cfg.get("speed")), "compile": False, "compile_mode": "default"}


def probe_key(cfg, device: torch.device) -> dict:
    """Everything that sets the cost of a step: a change in any of it measures again."""
    from omegaconf import OmegaConf

    model = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "model": model,
        "init": cfg.init.get("weight"),
        "shape": list(cfg.dataset.input_shape),
        "classes": int(cfg.dataset.num_classes),
        "batch_size": int(cfg.batch_size),
        "precision": str(cfg.trainer.get("precision")),
        "speed": probed_speed(cfg),
        "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True),
        "device": _device_name(device),
        "torch": torch.__version__,
    }


def probe(cfg, cap: int, step_seconds=None) -> dict:
    """{size, gain (runs per second vs one at a time), seconds: {size: s per step}, device,
    cached}: the fastest stack size up to `cap`, from the cache when measured before."""
    device = device_for(cfg)
    key = probe_key(cfg, device)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache.cache_dir() / FILE
    entries = _read(path)
    seconds = _usable(entries.get(digest), cap)
    cached = seconds is not None
    if not cached:
        seconds = measure(candidate_sizes(cap), step_seconds or step_timer(cfg, device))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the probe's stacks, before the real one
        entries[digest] = {
            "key": key,
            "seconds": seconds,
            "stopped_early": max(seconds) < cap,
            "when": time.time(),
        }
        _write(path, entries)
    size = best_size(seconds)
    gain = {k: k * seconds[1] / s for k, s in seconds.items()}  # runs/s vs one at a time
    log.debug("stack probe %s: seconds per step %s -> %d", cfg.model.name, seconds, size)
    return {
        "size": size,
        "gain": gain[size],
        "seconds": seconds,
        "device": device.type,
        "best_stacked": max((g for k, g in gain.items() if k > 1), default=1.0),
        "cached": cached,
    }


def _usable(entry, cap: int) -> dict[int, float] | None:
    """The cached {size: seconds} for sizes up to `cap`, if they answer for this cap: the
    probe went as far, or stopped before it because larger sizes were slower."""
    try:
        seconds = {int(k): float(v) for k, v in entry["seconds"].items()}
        if 1 in seconds and (entry["stopped_early"] or max(seconds) >= cap):
            return {k: v for k, v in seconds.items() if k <= cap}
    except (TypeError, KeyError, ValueError, AttributeError):  # none, or not ours: measure
        pass
    return None


def _read(path: Path) -> dict:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write(path: Path, entries: dict) -> None:
    from zeroinit.results import write_json_atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, entries)
    except OSError as e:  # a read-only cache only costs the next sweep its probe
        log.info("stack probe not cached (%s)", e)


# ------------------------------------------------------------------------- memory
def memory_cap(cfg) -> int:
    """How many members fit in half of the free memory of the device the run will use:
    per member, fp32 weights + gradients + two optimizer moments (16 bytes a parameter) and
    3x the activations of one training batch (outputs kept for backward and their
    gradients), measured on the meta device (nothing allocated)."""
    shape = tuple(cfg.dataset.get("input_shape") or ())
    classes = cfg.dataset.get("num_classes")
    if not shape or not classes:
        return MAX_AUTO_STACK
    with torch.device("meta"):
        net = build_model(cfg, shape, classes)
        sizes = []
        hooks = [
            m.register_forward_hook(lambda m, a, out: sizes.append(out.numel()))
            for m in net.modules()
            if not list(m.children())
        ]
        net(torch.empty(int(cfg.batch_size), *shape))
        for h in hooks:
            h.remove()
        params = sum(p.numel() for p in net.parameters())
    per_member = 16 * params + 4 * 3 * sum(sizes)
    return max(1, int(0.5 * _free_bytes(cfg) // per_member))


def _free_bytes(cfg) -> int:
    if torch.cuda.is_available() and cfg.trainer.get("accelerator") in ("auto", "gpu", "cuda"):
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")

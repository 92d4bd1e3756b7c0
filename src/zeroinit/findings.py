"""The BatchNorm study (issue 13, docs/findings.md): what breaks the symmetry of zero-weight
layers when a BatchNorm follows them?

Hypothesis: with BatchNorm, the random biases are cancelled (a zero-weight conv outputs a
constant per channel, and BatchNorm maps a constant channel to its beta), so what wakes the
layers below it is floating-point rounding noise, amplified by Adam's division by the
gradient's own scale. If so, waking and learning depend on the precision, on Adam's eps and on
the optimizer, and vanish without BatchNorm's cancellation.

Every run is an ordinary run of the project (zeroinit.run.train_or_resume on a composed config:
`python src/train.py experiment=bn_study <MODELS[m]> <CONDITIONS[c]> seed=<s>` trains the same
run); this module only picks the runs and reads their results.json (its `diagnostics` and
`final`), plus one measurement of its own: BatchNorm outputs at init (forward hooks).

    python src/bn_study.py run [--seeds 5]        # outputs/sweeps/bn_study/<model>-<cond>-s<seed>
    python src/bn_study.py report                 # tables -> stdout and outputs/bn_study.md
"""

import math
import statistics
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zeroinit.report import mean_ci
from zeroinit.results import read_results

# Reduced widths so the study fits a 2-core CPU; depth and layer order are the paper's.
MODELS = {
    "cifar_cnn_w4": [
        "model=cifar_cnn",
        "model.stages=[[8,16],[32,32],[64,64]]",
        "model.hidden=[256,128]",
    ],  # cifar_cnn at 1/4 width
    "resnet50_w16": ["model=resnet50", "model.widths=[4,8,16,32]"],  # ResNet-50 at 1/16 width
    "mnist_fnn": ["model=mnist_fnn"],  # control: no BatchNorm
}
# All with init=bias_normal (the preset) unless they say otherwise.
CONDITIONS = {
    "fp32_adam": [],
    "fp64_adam": ["trainer.precision=64-true"],
    # Adam's amplification put back in float64: eps below the ~1e-19 rounding-size gradients
    "fp64_adam_eps1e-20": ["trainer.precision=64-true", "optimizer.eps=1e-20"],
    "fp32_adam_eps1e-3": ["optimizer.eps=1e-3"],
    "fp32_sgd": ["optimizer=sgd"],
    "fp32_adam_no_bn": ["model.batchnorm=false"],
    "fp32_adam_authors_scope": ["init.scope=authors"],
    "fp32_adam_pytorch_init": ["init=pytorch"],
}
NO_BN = {"mnist_fnn"}  # models without BatchNorm: the no-BN condition is the model itself
MOVED = 1e-3  # ||W - W_init|| above this after the watched steps: a real move (Adam's first
# step moves each entry of a woken weight by up to lr = 1e-3)


def runs_of(model: str) -> list[str]:
    return [c for c in CONDITIONS if not (model in NO_BN and c == "fp32_adam_no_bn")]


def run_dir(root: Path, model: str, condition: str, seed: int) -> Path:
    return Path(root) / f"{model}-{condition}-s{seed}"


def overrides(model: str, condition: str, seed: int) -> list[str]:
    return ["experiment=bn_study", *MODELS[model], *CONDITIONS[condition], f"seed={seed}"]


def train_all(root: Path, runs: list[tuple[str, list[str]]]) -> None:
    """Train each (folder name, overrides) under `root` unless finished (train_or_resume skips
    a finished run and resumes a killed one). A stop signal ends the process as train.py's
    does: the run recorded, one line, exit 128 + signal."""
    from zeroinit.run import compose, train_or_resume
    from zeroinit.signals import STOPPED, interrupt_on_ctrl_c, leave

    interrupt_on_ctrl_c()  # Ctrl-C between runs: one line and exit 130 too
    for name, args in runs:
        out = Path(root) / name
        try:
            outcome, results = train_or_resume(compose(*args, f"paths.output_dir={out}"), args)
        except STOPPED as stop:  # SIGTERM, Ctrl-C: one line, exit 128 + signal
            leave(stop, out, "to resume: the same command (finished runs are skipped)")
        acc = (results or {}).get("final", {}).get("test_acc")
        print(f"{name}: {outcome} test_acc {acc}", flush=True)


def run_study(root: Path, seeds: int, models=None) -> None:
    """Train every model x condition x seed not finished yet."""
    runs = [
        (run_dir(root, model, condition, seed).name, overrides(model, condition, seed))
        for seed in range(seeds)
        for model in models or MODELS
        for condition in runs_of(model)
    ]
    train_all(root, runs)


# ------------------------------------------------- the GPU's own rounding (issue 23 part 2)
# Full-width ResNet-50 (bias_normal, every layer), the study's 60 steps of 32, on random
# CIFAR-shaped images: wake-up needs no real images. The precisions a user can pick:
ROUNDING_MODEL = ["model=resnet50", "dataset=random_cifar10"]
ROUNDING = {
    "fp32": [],  # strict: the default (on a GPU: cuDNN's kernels, TF32 off)
    "tf32": ["speed=tf32"],  # 10-bit mantissa in matmuls and convs (GPU only)
    "bf16": ["speed=bf16"],  # bf16 autocast, 7-bit mantissa (GPU: tensor cores)
    "fp64": ["trainer.precision=64-true"],
}
CPU_ROUNDING = ("fp32", "fp64")  # tf32 does not exist on a CPU; its bf16 is not the GPU's


def rounding_name(condition: str, device: str, seed: int) -> str:
    return f"resnet50-{condition}-{device}-s{seed}"


def rounding_runs(seeds: int, device: str, conditions=None) -> list[tuple[str, list[str]]]:
    """The part's runs on `device` (cpu | gpu): (folder name, overrides)."""
    conditions = conditions or (CPU_ROUNDING if device == "cpu" else list(ROUNDING))
    return [
        (
            rounding_name(condition, device, seed),
            [
                "experiment=bn_study",
                *ROUNDING_MODEL,
                *ROUNDING[condition],
                f"trainer={device}",
                f"seed={seed}",
            ],
        )
        for condition in conditions
        for seed in range(seeds)
    ]


def _by_step(wake: dict, step: int) -> int:
    return sum(w is not None and w <= step for w in wake.values())


def _past_step_10(results: dict) -> bool:
    """Completed, or stopped (a kill, a signal) after its 10th step: what the step-10 columns
    need is final; its wake-ups count up to the step it watched last."""
    steps = ((results.get("diagnostics") or {}).get("first_steps") or {}).get("step") or []
    return results.get("status") == "completed" or len(steps) >= 10


def rounding_report(root: Path) -> str:
    """One row per device x condition found under `root`: layers woken by step 10, layers
    moved > MOVED after step 10 and layers woken by the last step watched, mean ± 95% CI over
    the seeds. A run stopped after step 10 counts, with the steps it watched shown."""
    lines = [
        "## The GPU's own rounding: full-width ResNet-50, bias_normal, random CIFAR-shaped "
        "images, batch 32, Adam eps 1e-8 (mean ± 95% CI over seeds)",
        "",
        "| device | condition | n | layers woken by step 10 | moved > 1e-3 after step 10 "
        "| woken by the step watched last (steps watched) | median ||W-W0|| after step 10 "
        "| device (results.json) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for device in ("cpu", "gpu"):
        for condition in ROUNDING:
            runs = _completed(
                lambda seed: Path(root) / rounding_name(condition, device, seed), _past_step_10
            )
            if not runs:
                continue
            f = [first_steps(r) for r in runs]
            n_layers = len(f[0]["layers"])

            def cell(values, fmt="{:.1f}"):
                mean, half = mean_ci(np.array([[v] for v in values], dtype=float))
                ci = "" if math.isnan(half[0]) else " ± " + fmt.format(half[0])
                return fmt.format(mean[0]) + ci + f" / {n_layers}"

            change = statistics.median(x["median_change"] for x in f)
            watched = ", ".join(str(x["watched"]) for x in f)
            lines.append(
                f"| {device} | {condition} | {len(runs)} | "
                f"{cell([_by_step(x['wake'], 10) for x in f])} | "
                f"{cell([x['moved'] for x in f])} | "
                f"{cell([_by_step(x['wake'], x['watched'] or 60) for x in f])} ({watched}) | "
                f"{_e(change)} | {runs[0].get('device', '-')} |"
            )
    return "\n".join(lines) + "\n"


def accuracy_commands(seeds: int, models=None, log_dir: str = "outputs") -> list[list[str]]:
    """The accuracy part (experiment=bn_accuracy): one stacked sweep per model and condition,
    its seeds the stack's members (conditions differ in precision or optimizer: never one
    stack). Each is a train.py command line; a rerun skips finished runs, resumes the rest."""
    return [
        [
            "-m",
            "experiment=bn_accuracy",
            *MODELS[model],
            *CONDITIONS[condition],
            f"seed={','.join(map(str, range(seeds)))}",
            "launcher=stacked",
            f"paths.log_dir={log_dir}",
            f"hydra.sweep.subdir={model}-{condition}-s${{seed}}",
        ]
        for model in models or MODELS
        for condition in runs_of(model)
    ]


# ------------------------------------------------- rounding vs padding (issue 37, part 1)
# experiment=bn_padding; each entry one train.py -m grid over the seeds (a grid crosses every
# comma list), in the order that answers the most first: the baselines, exact BatchNorm with no
# offset and with one, the authors' effective Adam eps (their loss is summed over the batch of
# 128: eps 1e-8 acts as ~8e-11), more offsets (time to wake against the offset), Adam's
# amplification put back in float64 (eps 1e-20), then the noise arm. On one core of the
# 2-core development CPU a run takes ~45 s in float32 and ~3-4 min in float64.
PADDING = ["model.padding_mode=zeros,circular"]
PADDING_SWEEPS = {
    "native": ["trainer.precision=32-true,64-true", "perturb.exact_bn=false"],
    "exact": [
        "trainer.precision=32-true,64-true",
        "perturb.exact_bn=true",
        "perturb.bn_offset=0,1e-8",
    ],
    "authors_eps": ["optimizer.eps=8e-11", "perturb.exact_bn=false,true"],
    "offsets": [
        "trainer.precision=32-true,64-true",
        "perturb.exact_bn=true",
        "perturb.bn_offset=1e-11,1e-5",
    ],
    "eps1e-20": [
        "trainer.precision=64-true",
        "optimizer.eps=1e-20",
        "perturb.exact_bn=false,true",
    ],
    "noise": ["trainer.precision=64-true", "perturb.exact_bn=true", "perturb.bn_noise=1e-5"],
}
# On real CIFAR-10 (the JPEG copy, docs/data.md), opt in with --sweeps: one epoch of 391
# steps, a sweep of its own. fp32 first (the baseline and exact BatchNorm with and without an
# offset), then the float64 cells that test "an offset learns with zeros, not with circular".
CIFAR = [
    "dataset=image_folder",
    "dataset.data_dir=data/cifar10-jpeg",
    "sweep_name=bn_padding_cifar",
    "trainer.max_epochs=1",
    "callbacks.diagnostics.wakeup_max_steps=391",
    "callbacks.border_split.steps=391",
]
PADDING_SWEEPS |= {
    "cifar_fp32_native": [*CIFAR, "perturb.exact_bn=false"],
    "cifar_fp32_exact": [*CIFAR, "perturb.exact_bn=true", "perturb.bn_offset=0,1e-8"],
    "cifar_fp64_exact": [
        *CIFAR,
        "trainer.precision=64-true",
        "perturb.exact_bn=true",
        "perturb.bn_offset=1e-8",
    ],
}
# One epoch is too short for the baseline to learn reliably on CIFAR-10: three epochs (1,173
# steps) of the float32 cells, in a sweep of their own; wake-up and border split are watched
# over the first epoch, when the convs wake.
CIFAR3 = [*(a for a in CIFAR if a != "trainer.max_epochs=1"), "trainer.max_epochs=3"]
CIFAR3 = [a.replace("sweep_name=bn_padding_cifar", "sweep_name=bn_padding_cifar3") for a in CIFAR3]
PADDING_SWEEPS |= {
    "cifar3_fp32_native": [*CIFAR3, "perturb.exact_bn=false"],
    "cifar3_fp32_exact": [*CIFAR3, "perturb.exact_bn=true", "perturb.bn_offset=1e-8"],
}


def padding_commands(seeds: int, sweeps=None, log_dir: str = "outputs") -> list[list[str]]:
    """train.py command lines of the rounding-vs-padding study, two runs at a time (a run
    records its border split and so trains alone); a rerun skips finished runs."""
    return [
        [
            "-m",
            "experiment=bn_padding",
            *PADDING,
            *PADDING_SWEEPS[name],
            f"seed={','.join(map(str, range(seeds)))}",
            "launcher=parallel",
            f"paths.log_dir={log_dir}",
        ]
        for name in sweeps or [n for n in PADDING_SWEEPS if not n.startswith("cifar")]
    ]


# ------------------------------------------------------------------ BatchNorm outputs at init
@torch.no_grad()
def batchnorm_outputs(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """max |output| of every BatchNorm of `net` (training mode, as in the first step) on the
    batch `x`, by name. ~0 where a constant channel comes in (the cancellation argument)."""
    found, handles = {}, []
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            handles.append(
                m.register_forward_hook(
                    lambda mod, inp, out, name=name: found.__setitem__(name, out.abs().max().item())
                )
            )
    try:
        net.train()
        net(x)
    finally:
        for h in handles:
            h.remove()
    return found


def measure_batchnorm(model: str, condition: str, batch: int = 32) -> dict[str, float]:
    """BatchNorm outputs at init of a study run's net, on its first `batch` training images."""
    from zeroinit.run import build_data, build_net, compose

    cfg = compose(*overrides(model, condition, 0), "paths.output_dir=unused")
    data = build_data(cfg)
    net = build_net(cfg, data)
    dtype = torch.float64 if str(cfg.trainer.precision).startswith("64") else torch.float32
    x = data.train_set[0][:batch].to(dtype).div(255)
    return batchnorm_outputs(net.to(dtype), x)


# ------------------------------------------------------------------------------- the tables
def first_steps(results: dict) -> dict:
    """One run's wake-up summary: per layer (input to output) the wake-up step and the weight
    change after the last recorded step; how many layers woke / moved."""
    d = results["diagnostics"]
    layers = [layer["name"] for layer in d["layers"]]
    steps = d["first_steps"]["step"]
    change = {n: (d["first_steps"]["layers"][n]["weight_change"] or [math.nan])[-1] for n in layers}
    grad = {n: (d["first_steps"]["layers"][n].get("grad_norm") or [math.nan])[-1] for n in layers}
    wake = {n: d["wakeup_step"].get(n) for n in layers}
    return {
        "layers": layers,
        "steps": steps[-1] if steps else 0,
        "wake": wake,
        "change": change,
        "grad": grad,
        "watched": d.get("wakeup_watched_steps"),
        "woke": sum(w is not None for w in wake.values()),
        "moved": sum(c > MOVED for c in change.values() if math.isfinite(c)),
        "median_change": statistics.median(change.values()),
    }


def _completed(folder, accept=None) -> list[dict]:
    """results.json of the completed runs (or those `accept(results)` takes) among
    folder(0), folder(1), ... (seeds), up to the first seed without a folder. A folder
    without results.json (claimed, never started) is left out."""
    out = []
    for seed in range(100):
        path = folder(seed)
        if not path.exists():
            break
        if (path / "results.json").exists():
            results = read_results(path)
            if accept(results) if accept else results.get("status") == "completed":
                out.append(results)
    return out


def _load(root: Path, model: str, condition: str) -> list[dict]:
    return _completed(lambda seed: run_dir(root, model, condition, seed))


def _e(x) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1e}"


def report(root: Path) -> str:
    lines = [
        "## First steps (seed 0): wake-up and weight change",
        "",
        "| model | condition | layers woken (step watched) | layers moved > 1e-3 "
        "after step 10 | median ||W-W0|| after step 10 | test acc (seed 0) |",
        "|---|---|---|---|---|---|",
    ]
    per_layer = {}
    for model in MODELS:
        for condition in runs_of(model):
            runs = _load(root, model, condition)
            if not runs:
                continue
            f = first_steps(runs[0])
            per_layer[(model, condition)] = f
            lines.append(
                f"| {model} | {condition} | {f['woke']}/{len(f['layers'])} "
                f"({f['watched']}) | {f['moved']}/{len(f['layers'])} | "
                f"{_e(f['median_change'])} | {runs[0]['final']['test_acc']:.3f} |"
            )
    for model in ("cifar_cnn_w4", "mnist_fnn"):
        conds = [c for c in runs_of(model) if (model, c) in per_layer]
        if not conds:
            continue
        layers = per_layer[(model, conds[0])]["layers"]
        lines += [
            "",
            f"### {model}, per layer (input to output): wake-up step / "
            "||W-W0|| after step 10 / weight-gradient norm at step 10, seed 0",
            "",
            "| layer | " + " | ".join(conds) + " |",
            "|---" * (len(conds) + 1) + "|",
        ]
        for name in layers:
            cells = []
            for c in conds:
                f = per_layer[(model, c)]
                cells.append(
                    f"{f['wake'].get(name) or 'never'} / {_e(f['change'].get(name))}"
                    f" / {_e(f['grad'].get(name))}"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Test accuracy after the short run (mean ± 95% CI, Student t)",
        "",
        "| model | condition | test acc % | n |",
        "|---|---|---|---|",
    ]
    for model in MODELS:
        for condition in runs_of(model):
            runs = _load(root, model, condition)
            if not runs:
                continue
            acc = np.array([[r["final"]["test_acc"]] for r in runs])
            mean, half = mean_ci(acc)
            ci = "" if math.isnan(half[0]) else f" ± {100 * half[0]:.2f}"
            lines.append(f"| {model} | {condition} | {100 * mean[0]:.2f}{ci} | {len(runs)} |")
    return "\n".join(lines) + "\n"


def batchnorm_report() -> str:
    lines = [
        "## BatchNorm outputs at init (training mode, first 32 training images)",
        "",
        "| model | condition | BatchNorms | max |out| over all | median of per-BN max |",
        "|---|---|---|---|---|",
    ]
    for model in MODELS:
        if model in NO_BN:
            continue
        for condition in (
            "fp32_adam",
            "fp64_adam",
            "fp32_adam_authors_scope",
            "fp32_adam_pytorch_init",
        ):
            found = measure_batchnorm(model, condition)
            values = list(found.values())
            lines.append(
                f"| {model} | {condition} | {len(values)} | {_e(max(values))} | "
                f"{_e(statistics.median(values))} |"
            )
    return "\n".join(lines) + "\n"

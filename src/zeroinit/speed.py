"""Speed settings (conf/speed/), all opt-in: by default every run is full fp32.

TF32 and bf16 round the inputs of every matmul and convolution, and this study is about
effects (symmetry of zero-weight layers, rank, dead units) that rounding could change. So
the default `speed=fp32` turns even PyTorch's own default of TF32 convolutions off. Turn the
options on where a result is known to hold, then check it on a few seeds in fp32.

  speed.tf32             TF32 tensor cores (Ampere and later) for fp32 matmuls and convs:
                         10-bit mantissa inputs, fp32 accumulation; several times the fp32
                         matmul throughput. Results change at about the 1e-3 relative level.
  trainer.precision      32-true (default) | bf16-mixed: autocast runs matmuls and convs in
                         bf16 (8-bit mantissa); weights, gradients and Adam state stay fp32.
                         About 2x TF32 on tensor cores, half the activation memory.
  speed.cudnn_benchmark  cuDNN times its convolution algorithms for each new input shape
                         and keeps the fastest (the first batches are slower). The choice can
                         differ between runs, so runs are no longer bitwise reproducible.
  speed.channels_last    NHWC memory layout for the nets' conv weights (and so their
                         activations): tensor-core convolutions without layout transposes;
                         pays off with bf16/TF32 on a GPU. Linear-only nets are unaffected.
  speed.fused_optimizer  the optimizer step as one fused kernel (torch's `fused=True`, for
                         the optimizers that have it: Adam, AdamW, SGD, ...; the others
                         keep their foreach step) instead of ~10 foreach kernels. Rounds the
                         update differently: ~1e-7 relative in fp32 after a step, 1e-16 in
                         float64. CPU, mnist_fnn: a step 2.55 -> 2.10 ms (docs/speed.md).
                         Not with trainer.precision=16-mixed (refused: the gradient
                         scaler would leave the diagnostics' gradients scaled).
  speed.compile          torch.compile the net in place (checkpoints keep their keys): fused
                         elementwise kernels, fewer launches. Compiling costs seconds (FNN)
                         to a minute or more (ResNet-50) at the start of every run, so it pays
                         off for the long runs. speed.compile_mode: default |
                         reduce-overhead (CUDA graphs: least launch overhead, for small nets)
                         | max-autotune (longest compile, fastest kernels). Each batch
                         shape (train, last train batch, test) gets its own static graph
                         (dynamic=False: a stacked cifar_cnn in float64 failed to compile
                         with symbolic shapes, torch 2.14.1), and each run starts from a reset
                         Dynamo. A compiled stack is checked against the eager one
                         (tests/test_stacked.py).

`configure` sets the process-wide switches and must run for every run (a -m sweep runs its
jobs in one process, so a run must not inherit the previous run's settings); `prepare`
applies the per-net ones.
"""

import functools
import inspect
import os

import torch
from torch import nn

from zeroinit.errors import check

DEFAULTS = {
    "tf32": False,
    "cudnn_benchmark": False,
    "channels_last": False,
    "compile": False,
    "compile_mode": "default",
    "fused_optimizer": False,
}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
SWITCHES = tuple(k for k, v in DEFAULTS.items() if isinstance(v, bool))  # true | false


def settings_of(speed) -> dict:
    """conf/speed with every key (the defaults filled in), checked: a bad value is one line."""
    settings = {**DEFAULTS, **dict(speed or {})}
    unknown = sorted(set(settings) - set(DEFAULTS))
    check(
        not unknown, f"speed: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(DEFAULTS)}"
    )
    for key in SWITCHES:
        check(
            isinstance(settings[key], bool),
            f"speed.{key}: {settings[key]!r} is not allowed; allowed: true, false",
        )
    check(
        settings["compile_mode"] in COMPILE_MODES,
        f"speed.compile_mode: {settings['compile_mode']!r} is not one of "
        f"{', '.join(COMPILE_MODES)}",
    )
    return settings


def configure(speed=None) -> dict:
    """Set the process-wide switches for one run; returns the full settings."""
    settings = settings_of(speed)
    # The legacy switches on purpose: Lightning reads get_float32_matmul_precision(), which
    # raises once the newer fp32_precision API has been used.
    torch.set_float32_matmul_precision("high" if settings["tf32"] else "highest")
    torch.backends.cudnn.allow_tf32 = settings["tf32"]  # PyTorch's own default: True
    torch.backends.cudnn.benchmark = settings["cudnn_benchmark"]
    _skip_nvml_check_without_gpu()
    return settings


def prepare(net: nn.Module, speed=None) -> nn.Module:
    """Apply the per-net settings (after the init scheme: values are never touched)."""
    settings = settings_of(speed)
    if settings["channels_last"]:
        net = net.to(memory_format=torch.channels_last)  # a no-op for Linear-only nets
    if settings["compile"]:
        from torch import _dynamo

        # A -m sweep's runs share one process: without a reset, each run's graphs (one per
        # batch shape) add to the previous runs' against Dynamo's recompile limit (8), past
        # which it falls back to eager code without failing
        _dynamo.reset()
        net.compile(mode=settings["compile_mode"], dynamic=False)  # in place: keys unchanged
    return net


def optimizer(factory, speed=None):
    """The run's optimizer factory (params -> optimizer, e.g. build(cfg.optimizer)) with
    speed.fused_optimizer applied: fused=True (and foreach off: torch takes one or the other)
    where the optimizer class has a fused step, unchanged otherwise."""
    if not settings_of(speed)["fused_optimizer"]:
        return factory
    cls = getattr(factory, "func", factory)  # Hydra's _partial_: a functools.partial
    takes = inspect.signature(cls).parameters
    if "fused" not in takes:
        return factory
    off = {"foreach": False} if "foreach" in takes else {}
    return functools.partial(factory, fused=True, **off)


def for_stack(settings: dict) -> dict:
    """A stack's per-net settings: no channels_last. Its conv weights are 5-d (member first)
    and its grouped convolutions in NHWC are unmeasured (benchmarks/stacked_conv_bench.py's
    grouped_nhwc, on a GPU, is to say whether they pay)."""
    return {**settings, "channels_last": False}


GPU_ONLY = ("tf32", "cudnn_benchmark", "channels_last")  # no effect on a CPU


def cpu_note(cfg) -> str | None:
    """What GPU speed options do when the run is on the CPU (one line), or None: they are
    allowed (bf16 autocast works on a CPU), but rarely what was meant."""
    accelerator = str(cfg.trainer.get("accelerator"))
    if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
        return None
    settings = settings_of(cfg.get("speed"))
    idle = [f"speed.{k}" for k in GPU_ONLY if settings[k]]
    bf16 = "bf16" in str(cfg.trainer.get("precision"))
    if not idle and not bf16:
        return None
    parts = []
    if bf16:
        parts.append(
            f"trainer.precision={cfg.trainer.precision} runs bf16 autocast on the "
            "CPU (bf16 matmuls: results change at ~1e-2, and most CPUs are slower "
            "at it than at fp32)"
        )
    if idle:
        parts.append(f"{', '.join(idle)} do nothing without a GPU")
    return f"speed: this run is on the CPU: {'; '.join(parts)}. speed=fp32 is the CPU's setting"


def _skip_nvml_check_without_gpu() -> None:
    """Not an option, always on: importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1
    (to keep forked workers CUDA-safe). On a machine with no GPU, every Adam/AdamW step then
    asks NVML whether CUDA is there, loading its library anew each time (~50 us a step, 2-5%
    of an MNIST FNN step on a CPU). Without a GPU there is no CUDA state to protect."""
    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == "1" and not torch.cuda.is_available():
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"

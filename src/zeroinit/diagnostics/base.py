"""What the diagnostics' parts share: the hook wrapper that times them and the net they read."""

import time

from torch import nn


def net_of(pl_module) -> nn.Module:
    """The model itself: the Classifier's `net`, unwrapped from torch.compile, so layer names
    match init_report.py and the probe pass runs eagerly (hooks, no recompilation)."""
    net = getattr(pl_module, "net", pl_module)
    return getattr(net, "_orig_mod", net)


def timed_hook(fn):
    """A Diagnostics hook: runs only where the callback is active, adds its time to
    record["time_s"], and if it returns True rewrites results.json (through the run's
    ResultsWriter) with that time included."""

    def wrapper(self, trainer, *args, **kwargs):
        if not self._active(trainer) or self.record is None:
            return
        start = time.perf_counter()
        try:
            flush = fn(self, trainer, *args, **kwargs)
        finally:
            self.record["time_s"] += time.perf_counter() - start
        if flush and self._writer is not None:
            self._writer.write()

    return wrapper

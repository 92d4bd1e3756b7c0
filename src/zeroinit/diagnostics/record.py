"""The diagnostics' record: results.json's "diagnostics" section, declared once. The callback
writes it (new_record, then fills it); zeroinit.report_diagnostics reads it for the report.

  settings       the callback's options
  layers         [{name, type, shape, units, fan_in}], every Linear/Conv, input to output
  wakeup_step    {layer: first step with a non-zero weight gradient, or null}
  wakeup_watched_steps   how many steps were checked
  first_steps    {step: [1..steps], layers: {layer: {FIRST_STEP_KEYS: [per step]}}}:
                 grad_norm, grad_nonzero_frac, bias_grad_norm, weight_change (||W - W_init||
                 after the step), hist_edges ([bins+1 edges] per step), hist_counts ([bins
                 counts] per step). Bins span [min, max] of the gradient; a constant gradient
                 (all zero: a sleeping layer) is one zero-width bin [v, v] holding every entry.
  symmetry       {final: {layer: {metric: value}} (the latest measurement),
                  history: {step: [...], epoch: [the epoch a step ends, else null],
                  layers: {layer: {metric: [...]}}}, skipped: {layer: reason}};
                 metrics: zeroinit.layer_metrics.METRICS
  time_s         seconds the callback itself took
"""

from zeroinit.layer_metrics import METRICS

SECTION = "diagnostics"  # its key in results.json
FIRST_STEP_KEYS = (
    "grad_norm",
    "grad_nonzero_frac",
    "bias_grad_norm",
    "weight_change",
    "hist_edges",
    "hist_counts",
)


def new_record(settings: dict, layers: list, skipped: dict) -> dict:
    """An empty record for `layers` [(name, module)], input to output."""
    names = [name for name, _ in layers]
    return {
        "settings": settings,
        "layers": [
            {
                "name": name,
                "type": type(m).__name__,
                "shape": list(m.weight.shape),
                "units": m.weight.shape[0],
                "fan_in": m.weight[0].numel(),
            }
            for name, m in layers
        ],
        "wakeup_step": {name: None for name in names},
        "wakeup_watched_steps": 0,
        "first_steps": {
            "step": [],
            "layers": {name: {k: [] for k in FIRST_STEP_KEYS} for name in names},
        },
        "symmetry": {
            "final": None,
            "history": {
                "step": [],
                "epoch": [],
                "layers": {name: {k: [] for k in METRICS} for name in names},
            },
            "skipped": skipped,
        },
        "time_s": 0.0,
    }

"""The results.json format: the contract between a run and everything after it (report,
resume, diagnostics, benchmarks). Extend it; don't fork it.

  status      running | completed | diverged | failed | interrupted (a stop signal; resumable)
  config      the resolved config;  overrides: the command-line overrides
  epochs      [{epoch, step, test_acc, test_loss, train_loss, train_acc, test_top_class_frac,
              epoch_time_s}], epoch from 1; step: optimizer steps taken by the epoch's end;
              test_top_class_frac: share of the test images predicted as the most-predicted
              class (1.0: one class for every image)
  final       {test_acc, test_loss} of the last epoch
  num_classes the data's classes (chance accuracy is 1/num_classes)
  wall_time_s, device (e.g. 'cuda:1: NVIDIA H200', 'cpu: <model>, 2 threads'), versions
  {python, torch, lightning}, error (failed runs only),
  stopped_by (interrupted runs only: the signal, e.g. SIGTERM)
  resumed_from_epoch (resumed runs);  stack_size (runs trained as a member of a stack)
  logger_runs {conf/logger key: run id} of the loggers a resume continues (mlflow, wandb)
  diagnostics (when the Diagnostics callback is on) its record, declared in
              zeroinit/diagnostics/record.py; what each metric means: layer_metrics.py

The file is rewritten after every epoch by write-then-rename, so a crash or a kill leaves
either the previous complete file or the new one, never a torn one.
"""

import json
import math
import platform
import time
from pathlib import Path

import lightning as L
import torch

from zeroinit.files import replaced_atomically
from zeroinit.loggers import log_scalars
from zeroinit.signals import stopped_by

FILENAME = "results.json"
# what the module measures each epoch (epoch_metrics), as results.json's `epochs` has them
METRICS = ("test_acc", "test_loss", "train_loss", "train_acc", "test_top_class_frac")


def write_json_atomic(path, data) -> None:
    with replaced_atomically(path) as f:
        json.dump(data, f, indent=2, allow_nan=True)


def read_results(run_dir) -> dict:
    with open(Path(run_dir) / FILENAME) as f:
        return json.load(f)


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        # the index too: which GPU of the node a run (a stack's place) trained on
        return f"cuda:{device.index or 0}: {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"cpu: {cpu_model()}, {threads} thread{'s' if threads != 1 else ''}"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def epoch_scalars(entry: dict) -> dict:
    """An `epochs` entry as the loggers' tags: test/acc, train/loss, ..., train/epoch_time_s."""
    return {
        key.replace("_", "/", 1) if key != "epoch_time_s" else "train/epoch_time_s": value
        for key, value in entry.items()
        if key not in ("epoch", "step") and value is not None
    }


class ResultsWriter(L.Callback):
    """Collects each epoch's metrics, logs them to every logger against the epoch, prints one
    line, and rewrites results.json. A non-finite training loss stops the run as `diverged`."""

    def __init__(self, run_dir, config: dict, overrides=(), verbose: bool = True):
        self.path = Path(run_dir) / FILENAME
        self.results = {
            "status": "running",
            "config": config,
            "overrides": list(overrides),
            "epochs": [],
            "final": None,
            "wall_time_s": 0.0,
            "device": None,
            "versions": versions(),
        }
        self.verbose = verbose
        self._start = self._epoch_start = None
        self._elapsed_before = 0.0  # wall time of earlier attempts, when resumed
        self._rank = 0  # only global rank 0 writes (set at fit start)
        self._refresh = []  # add_section's refresh callables

    @staticmethod
    def of(trainer) -> "ResultsWriter | None":
        """The run's writer, wherever it is in the trainer's callback list."""
        return next((c for c in trainer.callbacks if isinstance(c, ResultsWriter)), None)

    def add_section(self, key: str, section: dict, refresh=None) -> None:
        """How another callback adds its part to results.json (Diagnostics: "diagnostics"):
        `section` is a dict the callback keeps updating; every later write carries it, and
        the callback calls write() when it wants it on disk before the next epoch's write.
        `refresh()`, if given, is called before every write (to bring in what the callback
        keeps on the device)."""
        if key in (
            "status",
            "config",
            "overrides",
            "epochs",
            "final",
            "wall_time_s",
            "device",
            "versions",
            "error",
            "resumed_from_epoch",
            "stack_size",
            "logger_runs",
            "num_classes",
            "input_shape",
        ):
            raise ValueError(f"results.json key {key!r} belongs to the run itself")
        self.results[key] = section
        if refresh is not None:
            self._refresh.append(refresh)

    def state_dict(self):  # saved in the checkpoint, so a resumed run keeps its curve
        return {"epochs": self.results["epochs"], "wall_time_s": self.results["wall_time_s"]}

    def load_state_dict(self, state):
        self.results["epochs"] = list(state["epochs"])
        self.results["resumed_from_epoch"] = len(self.results["epochs"])
        self._elapsed_before = state["wall_time_s"]

    def write(self, status=None, **extra):
        for refresh in self._refresh:
            refresh()
        if status:
            self.results["status"] = status
        self.results.update(extra)
        if self._start is not None:
            self.results["wall_time_s"] = self._elapsed_before + time.perf_counter() - self._start
        if self.results["epochs"]:
            last = self.results["epochs"][-1]
            self.results["final"] = {k: last.get(k) for k in ("test_acc", "test_loss")}
        if self._is_writer():
            write_json_atomic(self.path, self.results)

    def _is_writer(self):
        return self._rank == 0

    def on_fit_start(self, trainer, pl_module):
        self._rank = trainer.global_rank
        self._start = self._epoch_start = time.perf_counter()  # resumed inside an epoch:
        self.results["device"] = describe_device(trainer.strategy.root_device)
        self.results["num_classes"] = getattr(trainer.datamodule, "num_classes", None)
        shape = getattr(trainer.datamodule, "input_shape", None)
        self.results["input_shape"] = list(shape) if shape is not None else None
        self.write("running")

    def on_train_epoch_start(self, trainer, pl_module):
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        metrics = pl_module.epoch_metrics()
        entry = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            **{k: metrics.get(k) for k in METRICS},
            "epoch_time_s": time.perf_counter() - self._epoch_start,
        }
        self.results["epochs"].append(entry)
        if self._is_writer():
            log_scalars(trainer.loggers, epoch_scalars(entry), entry["epoch"])
        diverged = not math.isfinite(
            entry["train_loss"] if entry["train_loss"] is not None else 0.0
        )
        if self.verbose and self._is_writer():
            print(
                f"epoch {entry['epoch']:>3}/{trainer.max_epochs}  "
                f"train_loss {entry['train_loss']:.4f}  test_loss {entry['test_loss']:.4f}  "
                f"test_acc {entry['test_acc']:.4f}  ({entry['epoch_time_s']:.2f}s)",
                flush=True,
            )
        if diverged:
            trainer.should_stop = True
            self.write("diverged")
        else:
            self.write()

    def on_fit_end(self, trainer, pl_module):
        if self.results["status"] == "running":
            self.write("completed")

    def on_exception(self, trainer, pl_module, exception):
        if self.results["status"] != "running":
            return
        if self._start is None:
            # Stopped before this fit started (restoring the checkpoint, setting up): a file
            # on disk is the last attempt's, with its curve, which this writer has not loaded;
            # keep it. A new run has written nothing: leave it so (train.py cleans up).
            return
        signal_name = stopped_by(exception)  # SIGTERM & co. (signals.py): stopped, not failed
        if signal_name:
            self.write("interrupted", stopped_by=signal_name)
        else:
            self.write("failed", error=f"{type(exception).__name__}: {exception}")


def shape_problem(results) -> str | None:
    """Why valid JSON is not a results.json of this format, or None."""
    if not isinstance(results, dict):
        return f"a JSON {type(results).__name__}, not an object"
    for key, kind in (("status", str), ("config", dict), ("epochs", list)):
        if not isinstance(results.get(key), kind):
            return f"no {key!r} ({kind.__name__})"
    if not all(isinstance(e, dict) and "epoch" in e for e in results["epochs"]):
        return "an entry of 'epochs' without its epoch"
    return None


def read_runs(*paths) -> list[tuple[Path, dict]]:
    """(run folder, results) of every results.json under `paths` (run or sweep folders, or
    the files), each once. A file that cannot be read, or is not of this format, comes back
    as {"status": "unreadable", "error": why}."""
    runs, seen = [], set()
    for p in map(Path, paths):
        files = [p] if p.name == FILENAME else sorted(p.rglob(FILENAME)) if p.is_dir() else []
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            try:
                results = json.loads(f.read_text())
                problem = shape_problem(results)
                if problem:
                    raise ValueError(f"not a run's results.json: {problem}")
            except (OSError, ValueError) as e:
                results = {"status": "unreadable", "error": str(e)}
            runs.append((f.parent, results))
    return runs


EPOCH_COLUMNS = ("epoch", "step", *METRICS, "epoch_time_s")
RUN_COLUMNS = (
    "figure",
    "configuration",
    "line",
    "run",
    "status",
    "error",
    "num_classes",
    "stack_size",
    "has_diagnostics",
)


def load(*paths):
    """Every run under `paths` (sweep, run or output folders) as a pandas DataFrame, one row
    per run and epoch (a run without a finished epoch: one row, epoch NaN). Columns:

      figure, configuration   the report's figure (sweep-dataset) and line label
      line                    the line's key: runs equal in it are seeds of one configuration
      run, status, error      the run's folder, its status (zeroinit.results), why it failed
      <config keys>           the resolved config, dotted: init.name, init.bias_scale, seed, ...
      epoch, step, test_acc, test_loss, train_loss, train_acc, test_top_class_frac,
      epoch_time_s           (step, test_top_class_frac: NaN for runs written before them)
      num_classes             the data's classes (NaN for runs written before it)
      stack_size              members of the stack it trained in (NaN: trained alone)
      has_diagnostics, wakeup_all, erank_mean, erank_first, ...   the diagnostics' summary
                              (zeroinit.report_diagnostics.summary_columns), per run

    zeroinit.report computes its tables and figures from this frame."""
    import pandas as pd

    from zeroinit.config import flatten
    from zeroinit.figures import figure_key, line_key, line_labels
    from zeroinit.report_diagnostics import summary_columns

    runs = [
        (path, results, flatten(results["config"]) if results["status"] != "unreadable" else {})
        for path, results in read_runs(*paths)
    ]
    lines: dict[str, dict[str, dict]] = {}
    for _, results, config in runs:
        if config:
            lines.setdefault(figure_key(config), {}).setdefault(line_key(config), config)
    labels = {fig: line_labels(figure) for fig, figure in lines.items()}
    rows = []
    for path, results, config in runs:
        run = {"run": str(path), "status": results["status"], "error": results.get("error")}
        if not config:
            rows.append(run)
            continue
        figure, line = figure_key(config), line_key(config)
        diagnostics = bool(results.get("diagnostics"))
        run.update(
            num_classes=results.get("num_classes"),
            stack_size=results.get("stack_size"),
            figure=figure,
            configuration=labels[figure][line],
            line=line,
            has_diagnostics=diagnostics,
            **config,
            **(summary_columns(results) if diagnostics else {}),
        )
        for entry in results["epochs"] or [{}]:
            rows.append({**run, **{k: entry.get(k) for k in EPOCH_COLUMNS}})
    frame = pd.DataFrame(rows)
    first = [c for c in (*RUN_COLUMNS, *EPOCH_COLUMNS) if c in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]

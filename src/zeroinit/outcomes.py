"""What became of each run, and the statistics a referee asks of outcomes that can fail outright.

A claim like "zero weights + random biases learn" is tested by how often a run does not learn,
not only by a mean: on CIFAR-10 a line of five seeds can hold four runs near 49% and one at
chance, whose mean and Student-t interval (41.56 ± 22.14) describe no run that happened. So:

- **Learned by step T**: a completed run whose test accuracy, measured at the end of every
  epoch, reached the threshold chance + margin (chance = 1/classes; margin 5 points unless the
  report is told otherwise) at an epoch that ended at or before step T. A run that did not has
  *never learned by T*, T being its last step. A run that stalled and woke later counts as
  learned: the rule always names its horizon.
- **Time to learn**: the step of the first epoch end at or above the threshold (accuracy is
  measured once an epoch, so it is known to within an epoch); runs that never got there are
  censored at their last step (">= T"), never dropped. Per line, a Kaplan-Meier curve of
  "not learned yet" and its median; between lines, the log-rank test.
- **Rates** k/n with exact (Clopper-Pearson) 95% intervals; differences of two rates with
  Newcombe's hybrid score interval and Fisher's exact test.
- **Mean accuracy** with an interval that stays inside the scale: a seeded BCa bootstrap from
  BOOTSTRAP_MIN_N runs up (the same input gives the same numbers), below that the Student-t
  interval intersected with [0, 1] (which keeps its coverage: the mean lies in [0, 1]); no
  interval describes a bimodal line well at small n, so every run's value is shown beside it.
- **Paired by seed**: two lines that share seeds share each seed's batch order; the per-seed
  difference, its interval and the seeds each side wins (sign test).

Diverged and failed runs are not outcomes here (zeroinit.report counts them apart).
"""

import math
import warnings

import numpy as np
from scipy import stats

MARGIN = 0.05  # learned: test accuracy >= chance + 5 points (a report option)
BOOTSTRAP_MIN_N = 10  # runs from which a line's mean gets a BCa bootstrap interval
RESAMPLES = 9999
SEED = 0  # the bootstrap's: the same runs give the same interval every time
LEVEL = 0.95
CLASSES = {"mnist": 10, "mnist5k": 10, "cifar10": 10}  # runs written before num_classes


def classes_of(row) -> float:
    """A run's class count (from its results.json, its config, or its dataset's name)."""
    for value in (row.get("num_classes"), row.get("dataset.num_classes")):
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return float(value)
    return float(CLASSES.get(row.get("dataset.name"), math.nan))


def per_run(rows, margin: float = MARGIN):
    """One row per run of `rows` (zeroinit.results.load's frame, any statuses): run, seed,
    status, epochs, last_step (NaN where not recorded), final_acc, final_loss, best_acc,
    chance, threshold, learned (completed runs only, else None), learn_step, learn_epoch
    (first epoch end at or above the threshold; NaN if censored), top_class_frac (at the last
    epoch), one_class (it predicted one class for every test image at its last epoch)."""
    import pandas as pd

    out = []
    for run, g in rows.groupby("run", sort=False):
        g = g.dropna(subset=["epoch"]).sort_values("epoch")
        first = rows[rows["run"] == run].iloc[0]
        chance = 1 / classes_of(first)
        threshold = chance + margin
        entry = {
            "run": run,
            "seed": first.get("seed"),
            "status": first["status"],
            "stack_size": first.get("stack_size"),
            "epochs": len(g),
            "chance": chance,
            "threshold": threshold,
        }
        if len(g):
            last, nan = g.iloc[-1], math.nan
            reached = g[g["test_acc"] >= threshold - 1e-12] if not math.isnan(threshold) else g[:0]
            entry.update(
                last_step=_num(last.get("step")),
                final_acc=float(last["test_acc"]),
                final_loss=float(last["test_loss"]),
                best_acc=float(g["test_acc"].max()),
                learn_step=_num(reached.iloc[0].get("step")) if len(reached) else nan,
                learn_epoch=float(reached.iloc[0]["epoch"]) if len(reached) else nan,
                top_class_frac=_num(last.get("test_top_class_frac")),
            )
            entry["one_class"] = entry["top_class_frac"] == 1.0
            if first["status"] == "completed" and not math.isnan(threshold):
                entry["learned"] = bool(len(reached))
        out.append(entry)
    columns = [
        "run", "seed", "status", "stack_size", "epochs", "last_step", "final_acc", "final_loss",
        "best_acc", "chance", "threshold", "learned", "learn_step", "learn_epoch",
        "top_class_frac", "one_class",
    ]  # fmt: skip
    frame = pd.DataFrame(out)
    for c in columns:
        if c not in frame.columns:
            frame[c] = None
    return frame[columns]


def _num(value) -> float:
    """A frame cell as a float: NaN for a value a run did not record (None)."""
    return math.nan if value is None else float(value)


def clopper_pearson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The exact binomial interval of k/n (never outside [0, 1]); NaNs for n = 0."""
    if n == 0:
        return math.nan, math.nan
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def newcombe(k1: int, n1: int, k2: int, n2: int, level: float = LEVEL):
    """p1 - p2 and its interval by Newcombe's hybrid score method (his method 10: Wilson
    intervals of each rate, combined), which stays inside [-1, 1] and behaves at 0/n."""
    if not n1 or not n2:
        return math.nan, math.nan, math.nan
    p1, p2 = k1 / n1, k2 / n2
    w1 = stats.binomtest(k1, n1).proportion_ci(confidence_level=level, method="wilson")
    w2 = stats.binomtest(k2, n2).proportion_ci(confidence_level=level, method="wilson")
    d = p1 - p2
    low = d - math.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2)
    high = d + math.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2)
    return d, low, high


def fisher(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p of Fisher's exact test on the 2x2 table of the two rates."""
    if not n1 or not n2:
        return math.nan
    return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)


def mean_interval(values, bounds=(0.0, 1.0), level: float = LEVEL) -> tuple[float, float, str]:
    """(low, high, method) of the mean of `values`, inside `bounds`: 'bca' (seeded bootstrap)
    from BOOTSTRAP_MIN_N values, 't' (Student t intersected with bounds) below, 'all equal'
    (a zero-width interval), or NaNs and 'n=1'/'n=0'."""
    v = np.asarray(values, dtype=float)
    n = len(v)
    if n < 2:
        return math.nan, math.nan, f"n={n}"
    if np.all(v == v[0]):
        return float(v[0]), float(v[0]), "all equal"
    if n >= BOOTSTRAP_MIN_N:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate resample: NaN, handled below
            ci = stats.bootstrap(
                (v,),
                np.mean,
                confidence_level=level,
                n_resamples=RESAMPLES,
                method="BCa",
                rng=np.random.default_rng(SEED),
            ).confidence_interval
        if math.isfinite(ci.low) and math.isfinite(ci.high):
            return _clip(ci.low, ci.high, bounds) + ("bca",)
    half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
    return _clip(v.mean() - half, v.mean() + half, bounds) + ("t",)


def _clip(low, high, bounds) -> tuple[float, float]:
    return float(max(bounds[0], low)), float(min(bounds[1], high))


def time_to_learn(runs) -> dict:
    """Kaplan-Meier of "not learned yet" over completed runs with a step record (`per_run`'s
    rows): {steps, not_learned (fraction at each step), median (first step where at most half
    have not learned; NaN if never), horizon (the last step of the longest run), n}."""
    done = runs[runs["learned"].notna() & runs["last_step"].notna()]
    if done.empty:
        return {"steps": [], "not_learned": [], "median": math.nan, "horizon": math.nan, "n": 0}
    horizon = float(done["last_step"].max())
    if not done["learned"].astype(bool).any():
        return {"steps": [0.0, horizon], "not_learned": [1.0, 1.0], "median": math.nan,
                "horizon": horizon, "n": len(done)}  # fmt: skip
    sf = stats.ecdf(censored(done)).sf
    steps, left = list(sf.quantiles), list(sf.probabilities)
    below = [s for s, p in zip(steps, left) if p <= 0.5]
    return {
        "steps": [0.0, *steps],
        "not_learned": [1.0, *left],
        "median": float(below[0]) if below else math.nan,
        "horizon": horizon,
        "n": len(done),
    }


def censored(runs):
    """Steps to learn of completed runs as scipy's CensoredData: a run that never learned is
    right-censored at its last step."""
    learned = runs["learned"].astype(bool).to_numpy()
    return stats.CensoredData(
        uncensored=runs.loc[learned, "learn_step"].to_numpy(float),
        right=runs.loc[~learned, "last_step"].to_numpy(float),
    )


def logrank(a, b) -> float:
    """Two-sided p of the log-rank test between two lines' times to learn (`per_run` rows of
    completed runs with steps); NaN when neither line has a run that learned, or when the
    test has no variance (every run of both lines learned at the same step: one epoch)."""
    a = a[a["learned"].notna() & a["last_step"].notna()]
    b = b[b["learned"].notna() & b["last_step"].notna()]
    if a.empty or b.empty or not pd_any(a["learned"]) and not pd_any(b["learned"]):
        return math.nan
    with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 there is scipy's NaN
        return float(stats.logrank(censored(a), censored(b)).pvalue)


def pd_any(learned) -> bool:
    return bool(learned.astype(bool).any())


def paired(a, b) -> dict:
    """Per-seed differences of final accuracy, a - b, over the seeds both lines completed
    (`per_run` rows): n, mean and its interval (bounds [-1, 1]), wins of each side, ties and
    the sign test's two-sided p (ties left out)."""
    da = a[a["status"] == "completed"].drop_duplicates("seed").set_index("seed")["final_acc"]
    db = b[b["status"] == "completed"].drop_duplicates("seed").set_index("seed")["final_acc"]
    shared = da.index.intersection(db.index)
    diff = (da[shared] - db[shared]).to_numpy(float)
    wins_a, wins_b = int((diff > 0).sum()), int((diff < 0).sum())
    low, high, method = mean_interval(diff, bounds=(-1.0, 1.0))
    decided = wins_a + wins_b
    return {
        "n": len(diff),
        "mean": float(diff.mean()) if len(diff) else math.nan,
        "low": low,
        "high": high,
        "method": method,
        "wins_a": wins_a,
        "wins_b": wins_b,
        "ties": len(diff) - decided,
        "sign_p": float(stats.binomtest(wins_a, decided).pvalue) if decided else math.nan,
    }

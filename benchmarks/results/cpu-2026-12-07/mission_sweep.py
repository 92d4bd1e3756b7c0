"""The mission's sweep as a user types it: stacked (-m's default) vs launcher=basic, 3 paired
repeats, the order alternating. Run from the repository root (README.md here has the result)."""

import statistics
import sys
import tempfile
from pathlib import Path

sys.path[:0] = ["benchmarks", "src"]
import timing  # noqa: E402 - benchmarks/timing.py

rows = {"basic": [], "stacked (default)": []}
with tempfile.TemporaryDirectory() as work:
    for rep in range(3):
        for name in list(rows) if rep % 2 == 0 else list(rows)[::-1]:
            extra = " launcher=basic" if name == "basic" else ""
            s = timing.time_sweep(timing.DEFAULT_SWEEP + extra, Path(work) / f"{name[:5]}{rep}")
            rows[name].append(s["wall_s"])
            print(name, rep, s["runs"], s["statuses"], f"{s['wall_s']:.1f}s", flush=True)
for name, w in rows.items():
    print(f"{name}: median {statistics.median(w):.1f}s of {[round(x, 1) for x in w]}")

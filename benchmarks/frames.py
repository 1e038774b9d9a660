"""Data frames and CSV files into a TimeSeries (issue 30's numbers), in one process.

1. A long table of 1,000 series x ~50 irregular times x 3 columns (10% of the values missing,
   rows shuffled) into a `TimeSeries` through `from_frame`, from pandas and from polars, and the
   same table as a CSV through `from_csv(..., id=...)`. Each series has its own times, drawn from
   a quarter-day clock over 100 days (so the union grid has at most 400 times).
2. A 1e6-row CSV (time + 3 columns) through `from_csv`, against the hand-written parser that
   `from_csv` used before (commit 705e617, `src/neuraldiffeq/data.py`, read from git history into
   a temporary module and imported in this process): same file, same machine, same process.

    python benchmarks/frames.py [--rows 1000000] [--repeats 3]

Prints a table of wall times (best and median of the repeats; the old parser runs once, it is
the slow one) and the ratio. Needs git (for the old parser) and pandas.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

import neuraldiffeq as nde

ROOT = Path(__file__).resolve().parent.parent
OLD = "705e617:src/neuraldiffeq/data.py"


def long_table(n_series=1000, n_times=50, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    slots = np.arange(400) * 0.25  # a quarter-day clock over 100 days
    times = np.stack([np.sort(rng.choice(slots, n_times, replace=False)) for _ in range(n_series)])
    values = rng.normal(size=(n_series, n_times, 3))
    values[rng.random(values.shape) < 0.1] = np.nan
    frame = pd.DataFrame(
        {
            "patient": np.repeat([f"p{i:04d}" for i in range(n_series)], n_times),
            "day": times.ravel(),
            "a": values[..., 0].ravel(),
            "b": values[..., 1].ravel(),
            "c": values[..., 2].ravel(),
        }
    )
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def old_from_csv():
    """The hand-written parser's `TimeSeries.from_csv`, from git history."""
    source = subprocess.run(
        ["git", "show", OLD], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    source = source.replace("from ._checks import", "from neuraldiffeq._checks import")
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "old_data.py")
    Path(path).write_text(source)
    spec = importlib.util.spec_from_file_location("old_data", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_data"] = module
    spec.loader.exec_module(module)
    return module.TimeSeries.from_csv


def timed(fn, repeats):
    walls, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - start)
    return walls, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []

    def report(name, walls, note=""):
        rows.append((name, min(walls), float(np.median(walls)), len(walls), note))

    frame = long_table()
    polars_frame = pl.from_pandas(frame)
    nde.TimeSeries([0.0, 1.0], np.zeros((2, 1)))  # JAX's start-up is not the frame's cost
    for name, df in (("pandas", frame), ("polars", polars_frame)):
        walls, data = timed(
            lambda df=df: nde.TimeSeries.from_frame(df, time="day", id="patient"), args.repeats
        )
        shape = "x".join(map(str, data.ys.shape))
        report(f"long table -> TimeSeries, from_frame({name})", walls, f"ys {shape}")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "long.csv")
        frame.to_csv(path, index=False)
        walls, data = timed(
            lambda: nde.TimeSeries.from_csv(path, time="day", id="patient"), args.repeats
        )
        report("long table -> TimeSeries, from_csv(id=...)", walls, f"{len(frame)} rows")

        rng = np.random.default_rng(1)
        big = os.path.join(folder, "big.csv")
        t = np.arange(args.rows) * 0.01
        pd.DataFrame(
            {
                "t": t,
                "x": rng.normal(size=args.rows),
                "y": rng.normal(size=args.rows),
                "z": rng.normal(size=args.rows),
            }
        ).to_csv(big, index=False, float_format="%.6g")
        size = os.path.getsize(big) / 1e6
        new_walls, new = timed(lambda: nde.TimeSeries.from_csv(big, time="t"), args.repeats)
        old = old_from_csv()
        old_walls, old_data = timed(lambda: old(big, time="t"), 1)
        assert np.array_equal(np.asarray(new.ys), np.asarray(old_data.ys)), "different values"
        assert np.array_equal(np.asarray(new.ts), np.asarray(old_data.ts)), "different times"
        note = f"{args.rows:,} rows x 4 columns, {size:.0f} MB"
        report("big CSV, from_csv (polars)", new_walls, note)
        report("big CSV, from_csv before (hand-written, 705e617)", old_walls, note)

    print(f"neuraldiffeq {nde.__version__}, polars {pl.__version__}, pandas {pd.__version__}")
    print("\n| what | best (s) | median (s) | runs | note |\n|---|---|---|---|---|")
    for name, best, median, n, note in rows:
        print(f"| {name} | {best:.3f} | {median:.3f} | {n} | {note} |")
    ratio = rows[-1][1] / rows[-2][1]
    print(
        f"\nCSV speed-up, old parser's time / polars' best time: {ratio:.1f}x (same file, "
        "same process; both results identical)"
    )


if __name__ == "__main__":
    main()

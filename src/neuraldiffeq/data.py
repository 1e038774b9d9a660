"""Observed time series: the one data container every strategy and model reads."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax import Array


class TimeSeries(eqx.Module):
    """Observations `ys` of a system at strictly increasing times `ts`.

    `ys` has shape `(T, D)` for one trajectory or `(B, T, D)` for `B` trajectories sampled on the
    same grid. Missing observations are allowed only through an explicit boolean `mask` of the same
    shape as `ys` (True = observed); masked-out entries of `ys` may hold anything, NaN included.

    Example:
        >>> import numpy as np, neuraldiffeq as nde
        >>> data = nde.TimeSeries(np.linspace(0, 1, 5), np.ones((5, 2)))
        >>> data.ys.shape, data.n_trajectories, data.dim
        ((5, 2), 1, 2)
    """

    ts: Array
    ys: Array
    mask: Array | None = None

    def __init__(self, ts, ys, mask=None):
        ts_np = _as_float_array(ts, "ts")
        ys_np = _as_float_array(ys, "ys")
        if ts_np.ndim != 1:
            raise ValueError(f"ts must be one-dimensional (T,), got shape {ts_np.shape}.")
        if ts_np.shape[0] < 2:
            raise ValueError(f"ts must hold at least 2 time points, got {ts_np.shape[0]}.")
        if not np.all(np.isfinite(ts_np)):
            raise ValueError("ts contains NaN or infinite values; every time must be finite.")
        # Check the times at the precision they will be used in (float32 unless x64 is on).
        ts_np = np.asarray(jnp.asarray(ts_np))
        if not np.all(np.diff(ts_np) > 0):
            bad = int(np.argmax(np.diff(ts_np) <= 0))
            raise ValueError(
                f"ts must be strictly increasing; ts[{bad}]={ts_np[bad]} is followed by "
                f"ts[{bad + 1}]={ts_np[bad + 1]} (at {ts_np.dtype} precision). Sort the data, drop "
                "repeated times, and shift large time origins (e.g. years) towards 0."
            )
        if ys_np.ndim not in (2, 3):
            raise ValueError(
                f"ys must have shape (T, D) or (B, T, D), got shape {ys_np.shape}. "
                "For a single state variable use ys[:, None]."
            )
        if ys_np.shape[-2] != ts_np.shape[0]:
            raise ValueError(
                f"ys has {ys_np.shape[-2]} time points along its time axis (shape {ys_np.shape}) "
                f"but ts has {ts_np.shape[0]}; time must be the axis before the state axis."
            )
        if mask is None:
            if not np.all(np.isfinite(ys_np)):
                raise ValueError(
                    "ys contains NaN or infinite values. Pass mask= (True where observed) to mark "
                    "missing observations explicitly."
                )
            mask_j = None
        else:
            mask_np = np.asarray(mask)
            if mask_np.shape != ys_np.shape:
                raise ValueError(
                    f"mask must have the shape of ys {ys_np.shape}, got {mask_np.shape}."
                )
            mask_np = mask_np.astype(bool)
            if not np.all(np.isfinite(ys_np[mask_np])):
                raise ValueError("ys has NaN or infinite values where mask says it is observed.")
            ys_np = np.where(mask_np, ys_np, 0.0)
            mask_j = jnp.asarray(mask_np)
        self.ts = jnp.asarray(ts_np)
        self.ys = jnp.asarray(ys_np)
        self.mask = mask_j

    @property
    def batched(self) -> bool:
        return self.ys.ndim == 3

    @property
    def n_trajectories(self) -> int:
        return self.ys.shape[0] if self.batched else 1

    @property
    def dim(self) -> int:
        return self.ys.shape[-1]

    def as_batch(self) -> TimeSeries:
        """The same data with a leading batch axis, `(B, T, D)`."""
        if self.batched:
            return self
        mask = None if self.mask is None else self.mask[None]
        return TimeSeries(self.ts, self.ys[None], mask)

    @classmethod
    def from_csv(
        cls, path: str | os.PathLike, time: str = "t", columns: Sequence[str] | None = None
    ) -> TimeSeries:
        """Read a CSV with a header row: one time column and one column per state variable.

        Empty cells are treated as missing observations (masked). Example:
            >>> import neuraldiffeq as nde
            >>> data = nde.TimeSeries.from_csv(nde.datasets.LYNX_HARE_CSV, time="year")
        """
        header, rows = _read_csv(path)
        if time not in header:
            raise ValueError(
                f"time column {time!r} not found in {os.fspath(path)!r}; its columns are {header}. "
                "Pass time=<name of the time column>."
            )
        if columns is None:
            columns = [c for c in header if c != time]
        missing = [c for c in columns if c not in header]
        if missing:
            raise ValueError(
                f"columns {missing} not found in {os.fspath(path)!r}; it has {header}."
            )
        if not columns:
            raise ValueError(f"{os.fspath(path)!r} has no state columns besides {time!r}.")

        def column(name):
            j = header.index(name)
            out = []
            for i, row in enumerate(rows):
                cell = row[j].strip() if j < len(row) else ""
                if cell == "":
                    out.append(np.nan)
                    continue
                try:
                    out.append(float(cell))
                except ValueError:
                    raise ValueError(
                        f"column {name!r} of {os.fspath(path)!r} is not numeric: row {i + 2} holds "
                        f"{cell!r}. Drop the column (columns=[...]) or clean the file."
                    ) from None
            return np.asarray(out)

        ts = column(time)
        if np.any(np.isnan(ts)):
            raise ValueError(f"time column {time!r} of {os.fspath(path)!r} has empty cells.")
        ys = np.stack([column(c) for c in columns], axis=-1)
        mask = ~np.isnan(ys)
        return cls(ts, ys, None if mask.all() else mask)


def _as_float_array(x, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of numbers, got {type(x).__name__}.") from None
    return arr


def _read_csv(path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as f:
            reader = csv.reader(line for line in f if not line.lstrip().startswith("#"))
            rows = [r for r in reader if any(cell.strip() for cell in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read CSV file {os.fspath(path)!r}: {e}") from None
    if len(rows) < 2:
        raise ValueError(f"{os.fspath(path)!r} needs a header row and at least one data row.")
    header = [h.strip() for h in rows[0]]
    return header, rows[1:]
